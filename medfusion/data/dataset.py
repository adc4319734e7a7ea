"""The map-style dataset of (image, text, label) samples and the collate function that batches them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import Dataset

from medfusion.data.errors import DataError, raise_for_rows, row_line
from medfusion.data.images import DECODE_ERRORS, ImageTooLarge, load_rgb

BadImagePolicy = Literal["raise", "skip"]
# "mark" (prediction sets under "skip"): keep the sample, with a blank image and its ``error``, so that its row in
# predictions.csv says why it has no prediction instead of silently disappearing.
SamplePolicy = Literal["raise", "skip", "mark"]


class MultimodalDataset(Dataset):
    """Samples of already validated records; images are decoded lazily, texts are pre-tokenized.

    A sample's ``image``/``input_ids`` is None where it has no image/text (the collate function marks it absent).

    Args:
        ids: sample ids (the CSV id column).
        labels: class indices.
        image_paths: one file (or None: no image) per sample, or None for text-only data.
        token_ids: token ids per sample (special tokens included; None: no text), or None for image-only data.
        transform: applied to the RGB PIL image.
        texts: the raw texts behind ``token_ids`` (for tables and explanations; not part of the samples).
        csv_path: the CSV the samples come from, named with ``rows`` in errors and warnings.
        rows: each sample's 0-based data row in ``csv_path``.
        on_bad_image: an image that fails to decode ``"raise"`` s a :class:`DataError` naming the file and its CSV
            line, or (``"skip"``) the sample is replaced by the next sample that loads (wrapping around), the
            sample gets ``replaced=1`` (0 otherwise) and a warning names the file the first time; a
            :class:`DataError` when no sample loads. ``"mark"`` keeps the sample with a blank image and the reason
            in its ``error`` (prediction sets: every requested id gets a row).
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: Sequence[int],
        image_paths: Sequence[Path | None] | None = None,
        token_ids: Sequence[Sequence[int] | None] | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        texts: Sequence[str | None] | None = None,
        csv_path: Path | None = None,
        rows: Sequence[int] | None = None,
        on_bad_image: SamplePolicy = "raise",
    ) -> None:
        for name, values in (("image_paths", image_paths), ("token_ids", token_ids), ("texts", texts), ("rows", rows)):
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{name} has {len(values)} entries for {len(ids)} ids")
        if on_bad_image not in ("raise", "skip", "mark"):
            raise ValueError(f"on_bad_image must be 'raise', 'skip' or 'mark', got {on_bad_image!r}")
        self.ids = list(ids)
        self.labels = list(labels)
        self.image_paths = image_paths
        self.token_ids = token_ids
        self.transform = transform
        self.texts = texts
        self.csv_path = csv_path
        self.rows = rows
        self.on_bad_image = on_bad_image
        self._bad: set[int] = set()  # indices whose image failed to decode (per process)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_image == "raise":
            return self._sample(index)
        if self.on_bad_image == "mark":
            try:
                return {**self._sample(index), "error": None}
            except _UnreadableImageError as err:
                rank_zero_warn(f"{err}; its prediction row gets status 'error' (data.on_bad_image: skip)")
                blank = Image.new("RGB", (8, 8))
                sample = self._sample(index, image=blank)
                return {**sample, "error": str(err)}
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate in self._bad:
                continue
            try:
                sample = self._sample(candidate)
            except _UnreadableImageError as err:
                self._bad.add(candidate)
                rank_zero_warn(f"{err}; replaced by the next sample that loads (data.on_bad_image: skip)")
                continue
            return {**sample, "replaced": int(step > 0)}
        where = f" of {self.csv_path}" if self.csv_path else ""
        raise DataError(
            f"None of the {len(self)} samples{where} could be loaded: every image failed to decode. "
            "Fix: check the image files (and data.image_dir)."
        )

    def _sample(self, index: int, image: Any = None) -> dict[str, Any]:
        """Sample ``index``; ``image`` replaces the file's image when given."""
        sample: dict[str, Any] = {"id": self.ids[index], "label": self.labels[index]}
        if self.image_paths is not None:
            image = self._image(index) if image is None else image
            sample["image"] = self.transform(image) if self.transform and image is not None else image
        if self.token_ids is not None:
            sample["input_ids"] = self.token_ids[index]
        return sample

    def _image(self, index: int) -> Any:
        path = self.image_paths[index]  # type: ignore[index]
        if path is None:
            return None
        try:
            return load_rgb(path)
        except DECODE_ERRORS as err:
            known = self.csv_path is not None and self.rows is not None
            if self.on_bad_image in ("skip", "mark"):
                where = f" ({self.csv_path} line {row_line(self.csv_path, self.rows[index])})" if known else ""
                raise _UnreadableImageError(f"Unreadable image {path}{where}: {err}") from err
            fix = "replace the file, or set data.on_bad_image: skip to replace such samples by the next readable one."
            detail = f"{path}: {err}"
            if isinstance(err, ImageTooLarge):
                detail, fix = f"Image too large to decode safely: {err.detail}", err.fix
            if known:
                raise_for_rows("Unreadable image file", self.csv_path, [self.rows[index]], [detail], fix)
            raise DataError(f"Unreadable image (id {self.ids[index]!r}): {detail}. Fix: {fix}") from err

    def without(self, modality: Literal["image", "text"]) -> MultimodalDataset:
        """A copy in which ``modality`` is absent for every sample (for robustness evaluation)."""
        if (self.image_paths if modality == "image" else self.token_ids) is None:
            raise ValueError(f"this dataset has no {modality} to remove")
        dataset = copy.copy(self)
        if modality == "image":
            dataset.image_paths = [None] * len(self)
        else:
            dataset.token_ids = [None] * len(self)
            dataset.texts = None if self.texts is None else [None] * len(self)
        dataset._bad = set()
        return dataset


class _UnreadableImageError(Exception):
    """An image failed to decode while ``on_bad_image="skip"``: the dataset moves on to the next sample."""


@dataclass
class Collate:
    """Stack images and pad token ids to the longest text of the batch (``attention_mask`` 1 = real).

    ``image_present``/``text_present`` mark which samples have each modality. An absent image becomes a zeros
    placeholder, an absent text the ``missing_text_ids`` row (default: one pad token), attended, so that
    shapes stay regular; models must not encode them (see ``MultimodalClassifier``). ``replaced`` (a 0-d long
    tensor) sums the samples' ``replaced`` counts when they carry one (``on_bad_image="skip"``); ``error`` lists
    the samples' read errors (None: read fine) when they carry one (``"mark"``).

    Args:
        pad_token_id: the padding id.
        missing_text_ids: the placeholder of an absent text, e.g. the tokenizer's ``[CLS] [SEP]``.
        image_shape: ``(C, H, W)`` of the placeholder when no sample of a batch has an image.
    """

    pad_token_id: int = 0
    missing_text_ids: tuple[int, ...] | None = None
    image_shape: tuple[int, int, int] | None = None

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        size = len(samples)
        batch: dict[str, Any] = {
            "id": [s["id"] for s in samples],
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        }
        if "image" in samples[0]:
            batch["image_present"] = torch.tensor([s["image"] is not None for s in samples], dtype=torch.bool)
            batch["image"] = self._images([s["image"] for s in samples])
        if "input_ids" in samples[0]:
            placeholder = list(self.missing_text_ids or (self.pad_token_id,))
            texts = [placeholder if s["input_ids"] is None else s["input_ids"] for s in samples]
            length = max(len(t) for t in texts)
            input_ids = torch.full((size, length), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((size, length), dtype=torch.long)
            for row, text in enumerate(texts):
                input_ids[row, : len(text)] = torch.as_tensor(text, dtype=torch.long)
                attention_mask[row, : len(text)] = 1
            batch.update(input_ids=input_ids, attention_mask=attention_mask)
            batch["text_present"] = torch.tensor([s["input_ids"] is not None for s in samples], dtype=torch.bool)
        if "error" in samples[0]:
            batch["error"] = [s["error"] for s in samples]
        if "replaced" in samples[0]:
            batch["replaced"] = torch.tensor(sum(s["replaced"] for s in samples), dtype=torch.long)
        return batch

    def _images(self, images: list[torch.Tensor | None]) -> torch.Tensor:
        present = next((image for image in images if image is not None), None)
        if present is None:
            if self.image_shape is None:
                raise ValueError("no sample of this batch has an image: give Collate an image_shape for placeholders")
            present = torch.zeros(self.image_shape)
        return torch.stack([torch.zeros_like(present) if image is None else image for image in images])
