"""The map-style dataset of samples with named modalities (images, text, tabular) and the collate function that
batches them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import Dataset

from medfusion.data.crops import CropError, CropReader, Crops
from medfusion.data.errors import DataError, raise_for_rows, row_line
from medfusion.data.image_cache import CachedImages
from medfusion.data.images import DECODE_ERRORS, ImageTooLarge, load_rgb
from medfusion.data.tabular import TabularFeatures

BadImagePolicy = Literal["raise", "skip"]
# "mark" (prediction sets under "skip"): keep the sample, with a blank image and its ``error``, so that its row in
# predictions.csv says why it has no prediction instead of silently disappearing.
SamplePolicy = Literal["raise", "skip", "mark"]


class MultimodalDataset(Dataset):
    """Samples of already validated records, one input per modality name; images are decoded and texts tokenized as
    samples are read (``token_ids`` may be a lazy :class:`~medfusion.data.token_ids.TokenIds`), tabular rows are
    pre-encoded.

    A sample is ``{"id", "label", "present": {name: bool}, name: input ...}``: an image modality's input is the
    transformed image (None where absent), the ``text`` modality's its token ids (None where absent), the
    ``tabular`` modality's ``{numeric, numeric_missing, categorical}`` row (always there; ``present`` says whether
    the model may use it). The collate function turns absent inputs into placeholders.

    Args:
        ids: sample ids (the CSV id column).
        labels: class indices.
        images: per image modality name, one file (or None: no image) per sample.
        token_ids: token ids per sample (special tokens included; None: no text), or None without text.
        tabular: the encoded tabular inputs of every sample, or None without tabular data.
        tabular_present: per sample, whether it has tabular inputs (default: all do).
        transform: applied to the RGB PIL images.
        texts: the raw texts behind ``token_ids`` (for tables and explanations; not part of the samples).
        csv_path: the CSV the samples come from, named with ``rows`` in errors and warnings.
        rows: each sample's 0-based data row in ``csv_path``.
        on_bad_image: an image that fails to decode ``"raise"`` s a :class:`DataError` naming the file and its CSV
            line, or (``"skip"``) the sample is replaced by the next sample that loads (wrapping around), the
            sample gets ``replaced=1`` (0 otherwise) and a warning names the file the first time; a
            :class:`DataError` when no sample loads. ``"mark"`` keeps the sample with a blank image and the reason
            in its ``error`` (prediction sets: every requested id gets a row).
        cached: per image modality name, its decoded-image cache entry (images stored there are read from it, the
            others from their files).
        cached_transform: applied to the uint8 images read from ``cached`` instead of ``transform``.
        crops: per crop modality name (``data.crops``), how its images (its source's files) are cut.
        stacks: per slice-stack modality name (``data.slices``), each sample's slice files in order: its input is
            ``[K, 3, S, S]``, every slice through the same random transform; in study mode (``data.study_column``)
            each study's images, ``[M, 3, S, S]`` with M varying.
        studies: the names of ``stacks`` that are studies: their images are transformed one by one (they may differ
            in size), not with one draw for all.
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: Sequence[int],
        images: dict[str, Sequence[Path | None]] | None = None,
        token_ids: Sequence[Sequence[int] | None] | None = None,
        tabular: TabularFeatures | None = None,
        tabular_present: Sequence[bool] | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        texts: Sequence[str | None] | None = None,
        csv_path: Path | None = None,
        rows: Sequence[int] | None = None,
        on_bad_image: SamplePolicy = "raise",
        cached: dict[str, CachedImages] | None = None,
        cached_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        crops: dict[str, Crops] | None = None,
        stacks: dict[str, list[list[str] | None]] | None = None,
        studies: Sequence[str] = (),
    ) -> None:
        images = dict(images or {})
        sized = {f"images[{name!r}]": paths for name, paths in images.items()}
        sized |= {"token_ids": token_ids, "texts": texts, "rows": rows, "tabular_present": tabular_present}
        if tabular is not None:
            sized["tabular"] = tabular
        for name, values in sized.items():
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{name} has {len(values)} entries for {len(ids)} ids")
        if on_bad_image not in ("raise", "skip", "mark"):
            raise ValueError(f"on_bad_image must be 'raise', 'skip' or 'mark', got {on_bad_image!r}")
        self.ids = list(ids)
        self.labels = list(labels)
        self.images = {name: list(paths) for name, paths in images.items()}
        self.token_ids = token_ids
        self.tabular = tabular
        self.tabular_present = (
            None if tabular is None else list(tabular_present) if tabular_present is not None else [True] * len(ids)
        )
        self.transform = transform
        self.texts = texts
        self.csv_path = csv_path
        self.rows = rows
        self.on_bad_image = on_bad_image
        self.cached = dict(cached or {})
        self.cached_transform = cached_transform
        self.crops = dict(crops or {})
        self.stacks = dict(stacks or {})
        self._offsets: dict[str, list[int]] = {}
        self.studies = frozenset(studies)
        self._cropper = CropReader(self.crops, self._where)
        self._bad: set[int] = set()  # indices whose image failed to decode (per process)

    @property
    def modalities(self) -> dict[str, str]:
        """The modality names of the samples and their kinds, images first."""
        kinds = dict.fromkeys(self.images, "image")
        if self.token_ids is not None:
            kinds["text"] = "text"
        if self.tabular is not None:
            kinds["tabular"] = "tabular"
        return kinds

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
                return {**self._sample(index, blank=True), "error": str(err)}
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

    def _sample(self, index: int, blank: bool = False) -> dict[str, Any]:
        """Sample ``index``; with ``blank`` its images are blank (a sample marked as unreadable)."""
        sample: dict[str, Any] = {"id": self.ids[index], "label": self.labels[index], "present": {}}
        for name, paths in self.images.items():
            pixels = self._cached_pixels(name, index) if paths[index] is not None else None
            if pixels is not None and not blank:
                if name in self.studies and self.cached_transform:
                    sample[name] = torch.stack([self.cached_transform(one) for one in pixels])
                else:
                    sample[name] = self.cached_transform(pixels) if self.cached_transform else pixels
            else:
                blanked = blank and paths[index] is not None
                image = self._blank(name, index) if blanked else self.load_image(name, index)
                if name in self.studies and self.transform and image is not None:
                    image = [self.transform(one) for one in image]
                elif self.transform and image is not None:
                    image = self.transform(image)
                sample[name] = image
                if isinstance(sample[name], list):  # a slice stack: the same random augmentation on every slice
                    sample[name] = torch.stack(sample[name])
            sample["present"][name] = paths[index] is not None
        if self.token_ids is not None:
            sample["text"] = self.token_ids[index]
            sample["present"]["text"] = sample["text"] is not None
        if self.tabular is not None:
            sample["tabular"] = self.tabular.row(index)
            sample["present"]["tabular"] = self.tabular_present[index]
        return sample

    def _cached_pixels(self, name: str, index: int) -> torch.Tensor | None:
        """Sample ``index``'s uint8 pixels of modality ``name`` from the image cache (``[K, 3, S, S]`` for a slice
        stack, whose entry holds K rows per sample); None when not all are stored."""
        if name not in self.cached:
            return None
        if name not in self.stacks:
            return self.cached[name].image(index)
        if name not in self._offsets:  # where each sample's files start in the flattened entry
            self._offsets[name] = list(accumulate((len(stack or ()) for stack in self.stacks[name]), initial=0))
        start = self._offsets[name][index]
        rows = [self.cached[name].image(start + j) for j in range(len(self.stacks[name][index]))]
        return None if any(r is None for r in rows) else torch.stack(rows)  # type: ignore[arg-type]

    def _blank(self, name: str, index: int) -> Any:
        """A blank stand-in for sample ``index``'s unreadable image (a list of them for a slice stack)."""
        if name in self.stacks:
            return [Image.new("RGB", (8, 8)) for _ in self.stacks[name][index] or ()]
        return Image.new("RGB", (8, 8))

    def _where(self, index: int) -> str:
        """Sample ``index``'s place for messages: its CSV line, else its id."""
        if self.csv_path is not None and self.rows is not None:
            return f"{self.csv_path} line {row_line(self.csv_path, self.rows[index])}"
        return f"id {self.ids[index]!r}"

    def load_image(self, name: str, index: int) -> Any:
        """Image modality ``name`` of sample ``index`` as an RGB image (None: it has none), cut to its crop when
        ``name`` is one (:mod:`medfusion.data.crops`; a crop that cannot be cut is a :class:`DataError`); for a
        slice stack (:mod:`medfusion.data.slices`) the list of its slices, in order."""
        if name in self.stacks and self.stacks[name][index] is not None:
            stack = self.stacks[name][index]
            return [self._open(path, index) for path in stack]
        paths = self.images[name]
        image = self.open_image(paths, index)
        if image is None or name not in self.crops:
            return image
        try:
            return self._cropper.cut(name, image, index, paths[index])
        except CropError as err:
            if self.csv_path is not None and self.rows is not None:
                raise_for_rows(f"A {name!r} crop that cannot be cut", self.csv_path, [self.rows[index]], [err.detail],
                               err.fix)  # fmt: skip
            raise DataError(f"The {name!r} crop of id {self.ids[index]!r}: {err.detail}. Fix: {err.fix}") from None

    def shown_box(self, name: str, index: int, size: int) -> list[float] | None:
        """Where crop modality ``name`` of sample ``index`` was cut, as fractions ``[x0, y0, x1, y1]`` of its
        source image as the model sees it (short side resized to ``size``, centre-cropped; clipped to it); None
        when the sample has no such image."""
        path = self.images[name][index]
        if path is None or name not in self.crops:
            return None
        with Image.open(path) as image:
            width, height = image.size
        (x0, y0, x1, y1), _ = self.crops[name].box(index, width, height)
        scale = size / min(width, height)
        left, top = (int(width * scale) - size) / 2, (int(height * scale) - size) / 2
        box = [(x0 * scale - left) / size, (y0 * scale - top) / size, (x1 * scale - left) / size,
               (y1 * scale - top) / size]  # fmt: skip
        return [min(max(v, 0.0), 1.0) for v in box]

    def open_image(self, paths: list[Path | None], index: int) -> Any:
        """The RGB image ``paths[index]`` (None for no image); a file that fails to decode raises as
        ``on_bad_image`` says (a :class:`DataError` naming the file and CSV line under ``"raise"``)."""
        return self._open(paths[index], index)

    def _open(self, path: Path | str | None, index: int) -> Any:
        """The RGB image ``path`` of sample ``index`` (see :meth:`open_image`)."""
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

    def without(self, modality: str) -> MultimodalDataset:
        """A copy in which ``modality`` (a name) is absent for every sample (for robustness evaluation)."""
        if modality not in self.modalities:
            raise ValueError(f"this dataset has no modality {modality!r} to remove (it has {list(self.modalities)})")
        dataset = copy.copy(self)
        if modality in self.images:
            dataset.images = {**self.images, modality: [None] * len(self)}
            if modality in self.stacks:
                dataset.stacks = {**self.stacks, modality: [None] * len(self)}
        elif modality == "text":
            dataset.token_ids = [None] * len(self)
            dataset.texts = None if self.texts is None else [None] * len(self)
        else:
            dataset.tabular_present = [False] * len(self)
        dataset._bad = set()
        return dataset


class _UnreadableImageError(Exception):
    """An image failed to decode while ``on_bad_image="skip"``: the dataset moves on to the next sample."""


@dataclass
class Collate:
    """Batch samples: stack images and tabular rows, pad token ids to the longest text of the batch
    (``attention_mask`` 1 = real).

    The batch is ``{"id", "label", "present": {name: bool [B]}, name: input ...}``: an image modality
    ``[B, C, H, W]``, the text ``{"input_ids", "attention_mask"}`` long ``[B, L]``, the tabular
    ``{"numeric", "numeric_missing", "categorical"}``. An absent image becomes a zeros placeholder, an absent text
    the ``missing_text_ids`` row (default: one pad token), attended, so that shapes stay regular; models must not
    encode them (see ``MultimodalClassifier``). ``replaced`` (a 0-d long tensor) sums the samples' ``replaced``
    counts when they carry one (``on_bad_image="skip"``); ``error`` lists the samples' read errors (None: read
    fine) when they carry one (``"mark"``).

    Args:
        pad_token_id: the padding id.
        missing_text_ids: the placeholder of an absent text, e.g. the tokenizer's ``[CLS] [SEP]``.
        image_shape: ``(C, H, W)`` of the placeholder when no sample of a batch has an image.
        sets: image modalities whose samples hold a varying number of images (studies): batched as
            ``{"images": [B, M, C, H, W], "mask": bool [B, M]}``, padded with zeros to the batch's largest study.
    """

    pad_token_id: int = 0
    missing_text_ids: tuple[int, ...] | None = None
    image_shape: tuple[int, int, int] | None = None
    sets: tuple[str, ...] = ()

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        first = samples[0]
        batch: dict[str, Any] = {
            "id": [s["id"] for s in samples],
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "present": {
                name: torch.tensor([s["present"][name] for s in samples], dtype=torch.bool) for name in first["present"]
            },
        }
        for name in first["present"]:
            values = [s[name] for s in samples]
            if name == "text":
                batch[name] = self._texts(values)
            elif name == "tabular":
                batch[name] = {key: torch.stack([torch.as_tensor(v[key]) for v in values]) for key in values[0]}
            elif name in self.sets:
                batch[name] = self._sets(values)
            else:
                batch[name] = self._images(values)
        if "error" in first:
            batch["error"] = [s["error"] for s in samples]
        if "replaced" in first:
            batch["replaced"] = torch.tensor(sum(s["replaced"] for s in samples), dtype=torch.long)
        return batch

    def _texts(self, token_ids: list[Sequence[int] | None]) -> dict[str, torch.Tensor]:
        placeholder = list(self.missing_text_ids or (self.pad_token_id,))
        texts = [placeholder if t is None else t for t in token_ids]
        length = max(len(t) for t in texts)
        input_ids = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, text in enumerate(texts):
            input_ids[row, : len(text)] = torch.as_tensor(text, dtype=torch.long)
            attention_mask[row, : len(text)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _sets(self, sets: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        largest = max((len(s) for s in sets if s is not None), default=1)
        shape = next((s.shape[1:] for s in sets if s is not None), self.image_shape)
        if shape is None:
            raise ValueError("no sample of this batch has an image: give Collate an image_shape for placeholders")
        images = torch.zeros((len(sets), largest, *shape))
        mask = torch.zeros((len(sets), largest), dtype=torch.bool)
        for row, one in enumerate(sets):
            if one is not None:
                images[row, : len(one)], mask[row, : len(one)] = one, True
        return {"images": images, "mask": mask}

    def _images(self, images: list[torch.Tensor | None]) -> torch.Tensor:
        present = next((image for image in images if image is not None), None)
        if present is None:
            if self.image_shape is None:
                raise ValueError("no sample of this batch has an image: give Collate an image_shape for placeholders")
            present = torch.zeros(self.image_shape)
        return torch.stack([torch.zeros_like(present) if image is None else image for image in images])
