"""The map-style dataset of (image, text, label) samples and the collate function that batches them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from medfusion.data.images import load_rgb


class MultimodalDataset(Dataset):
    """Samples of already validated records; images are decoded lazily, texts are pre-tokenized.

    Args:
        ids: sample ids (the CSV id column).
        labels: class indices.
        image_paths: one file per sample, or None for text-only data.
        token_ids: token ids per sample (special tokens included), or None for image-only data.
        transform: applied to the RGB PIL image.
        texts: the raw texts behind ``token_ids`` (for tables and explanations; not part of the samples).
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: Sequence[int],
        image_paths: Sequence[Path] | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        texts: Sequence[str] | None = None,
    ) -> None:
        for name, values in (("image_paths", image_paths), ("token_ids", token_ids), ("texts", texts)):
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{name} has {len(values)} entries for {len(ids)} ids")
        self.ids = list(ids)
        self.labels = list(labels)
        self.image_paths = image_paths
        self.token_ids = token_ids
        self.transform = transform
        self.texts = texts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"id": self.ids[index], "label": self.labels[index]}
        if self.image_paths is not None:
            image = load_rgb(self.image_paths[index])
            sample["image"] = self.transform(image) if self.transform else image
        if self.token_ids is not None:
            sample["input_ids"] = self.token_ids[index]
        return sample


@dataclass
class Collate:
    """Stack images and pad token ids to the longest text of the batch (``attention_mask`` 1 = real)."""

    pad_token_id: int = 0

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        size = len(samples)
        batch: dict[str, Any] = {
            "id": [s["id"] for s in samples],
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        }
        if "image" in samples[0]:
            batch["image"] = torch.stack([s["image"] for s in samples])
            batch["image_present"] = torch.ones(size, dtype=torch.bool)
        if "input_ids" in samples[0]:
            length = max(len(s["input_ids"]) for s in samples)
            input_ids = torch.full((size, length), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((size, length), dtype=torch.long)
            for row, s in enumerate(samples):
                n = len(s["input_ids"])
                input_ids[row, :n] = torch.as_tensor(s["input_ids"], dtype=torch.long)
                attention_mask[row, :n] = 1
            batch.update(input_ids=input_ids, attention_mask=attention_mask)
            batch["text_present"] = torch.ones(size, dtype=torch.bool)
        return batch
