"""LightningDataModules for image+text classification from a CSV (+ JSON) and an image folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from medfusion.data.dataset import Collate, MultimodalDataset
from medfusion.data.demo import default_cache_dir, ensure_demo_data
from medfusion.data.errors import DataError
from medfusion.data.images import ImageIndex, verify_images
from medfusion.data.samplers import DistributedWeightedSampler, class_balanced_weights
from medfusion.data.splits import (
    check_groups_disjoint,
    check_splits_present,
    splits_from_column,
    stratified_group_split,
)
from medfusion.data.table import Records, infer_class_names, label_indices, read_records
from medfusion.data.texts import read_text_json
from medfusion.data.tokenizer import WORDPIECE, build_tokenizer
from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

Modality = Literal["image", "text"]
SamplerKind = Literal["shuffle", "balanced"]


@dataclass
class TestSet:
    """An external test set: its own CSV with the same columns, optionally its own images and texts."""

    csv_path: str
    image_dir: str | None = None
    text_json: str | None = None


class MultimodalDataModule(L.LightningDataModule):
    """Image + text classification data from the layout users have: a CSV, a JSON of texts, an image folder.

    Everything is read and validated when the module is built (bad input fails once, naming
    the file, rows and fix), so ``num_classes``, ``class_names``, ``class_counts`` and
    ``vocab_size`` can be linked into the model by the CLI. Image decoding is checked in
    :meth:`setup`.

    Args:
        csv_path: one row per sample with an id and a label column.
        image_dir: root of the image files; the id (or ``image_column``) is a path relative to
            it, with or without extension, searched recursively by file stem as a fallback.
        text_json: a JSON file ``{id: text}``.
        text_column: a CSV column holding the text.
        text_template: builds the text from columns, e.g.
            ``"{age}-year-old {sex}, lesion on the {localization}."`` (missing values read "unknown").
        id_column: the id column (HAM10000: ``image_id``).
        label_column: the class column (HAM10000: ``dx``).
        image_column: a column of image paths, when they differ from the ids.
        split_column: ``train``/``val``/``test`` per row; otherwise stratified random splits.
        group_column: patient or lesion id; a group never spans two splits.
        class_names: the classes and their order; default: labels found in the CSV, sorted.
        modalities: which inputs to load: ``["image", "text"]``, ``["image"]`` or ``["text"]``.
        val_ratio: fraction of groups for validation when there is no split column.
        test_ratio: fraction of groups for testing when there is no split column.
        seed: seed of the random split.
        test_sets: external test sets by name, each tested on its own (metrics ``test_<name>/...``).
        predict_csv: rows to predict (labels optional); default: the test split.
        image_size: side of the square model input.
        augment: random crops, flips and colour jitter in training.
        mean: normalisation mean (ImageNet by default, as timm's pretrained weights expect).
        std: normalisation std.
        verify_images: decode-check every image file in :meth:`setup`.
        tokenizer: ``"wordpiece"`` (trained on the training texts, offline) or a hub name / local
            path of a pretrained tokenizer (use the text encoder's).
        vocab_size: target size of the trained WordPiece vocabulary.
        max_length: texts are truncated to this many tokens (the count is reported).
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        sampler: training order: ``"shuffle"`` (each sample once per epoch) or ``"balanced"`` (as many
            draws per epoch as training samples, with replacement, each class equally likely; seeded by
            ``seed`` and the epoch; DDP ranks share one draw). Do not combine ``"balanced"`` with a
            class-aware loss (class weights, focal ``alpha``, logit adjustment): double correction.
    """

    def __init__(
        self,
        csv_path: str,
        image_dir: str | None = None,
        text_json: str | None = None,
        text_column: str | None = None,
        text_template: str | None = None,
        id_column: str = "image_id",
        label_column: str = "label",
        image_column: str | None = None,
        split_column: str | None = None,
        group_column: str | None = None,
        class_names: list[str] | None = None,
        modalities: list[Modality] | None = None,
        val_ratio: float = 0.15,
        test_ratio: float = 0.15,
        seed: int = 42,
        test_sets: dict[str, TestSet] | None = None,
        predict_csv: str | None = None,
        image_size: int = 224,
        augment: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        verify_images: bool = True,
        tokenizer: str = WORDPIECE,
        vocab_size: int = 2000,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        sampler: SamplerKind = "shuffle",
    ) -> None:
        super().__init__()
        if sampler not in ("shuffle", "balanced"):
            raise ValueError(f"sampler must be 'shuffle' or 'balanced', got {sampler!r}")
        self.sampler = sampler
        self.id_column, self.label_column, self.group_column = id_column, label_column, group_column
        self.image_column, self.text_column, self.text_template = image_column, text_column, text_template
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed
        self.image_size, self.augment, self.mean, self.std = image_size, augment, mean, std
        self.verify_images, self.max_length = verify_images, max_length
        self.batch_size, self.num_workers = batch_size, num_workers
        self.modalities = list(modalities or ["image", "text"])
        if not self.modalities or set(self.modalities) - {"image", "text"}:
            raise ValueError(f"modalities must be a non-empty subset of ['image', 'text'], got {modalities}")
        if "image" in self.modalities and image_dir is None:
            raise DataError("Images are used but data.image_dir is not set. Fix: set it, or use modalities: [text].")
        self.uses_image = "image" in self.modalities
        self.uses_text = "text" in self.modalities

        records = self._table = self._read(
            csv_path, image_dir, text_json, split_column=split_column, group_column=group_column
        )
        self.class_names: list[str] = list(class_names) if class_names else infer_class_names(records.labels)
        labels = label_indices(records, self.class_names)
        splits = self._assign_splits(records)
        self._records = {
            s: records.subset([r for r, x in enumerate(splits) if x == s]) for s in ("train", "val", "test")
        }
        self._labels = {s: [labels[r] for r, x in enumerate(splits) if x == s] for s in ("train", "val", "test")}

        counts = Counter(self._labels["train"])
        self.class_counts: list[int] = [counts.get(i, 0) for i in range(self.num_classes)]
        empty = [self.class_names[i] for i, c in enumerate(self.class_counts) if c == 0]
        if empty:
            raise DataError(f"Classes {empty} have no training rows in {csv_path}. Fix: add rows or drop the classes.")

        self.test_set_names = ["test"]
        self._test_records = [self._records["test"]]
        self._test_labels = [self._labels["test"]]
        for name, spec in (test_sets or {}).items():
            ext = self._read(spec.csv_path, spec.image_dir or image_dir, spec.text_json or text_json)
            self.test_set_names.append(name)
            self._test_records.append(ext)
            self._test_labels.append(label_indices(ext, self.class_names))
        self._predict_records = (
            self._read(predict_csv, image_dir, text_json, labels_required=False) if predict_csv else None
        )

        self.tokenizer = None
        self.vocab_size: int | None = None
        if self.uses_text:
            self.tokenizer = build_tokenizer(tokenizer, self._records["train"].texts, vocab_size)
            self.vocab_size = len(self.tokenizer)
        self._verified = False
        self.datasets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ----------------------------------------------------------------------------- reading
    def _read(
        self,
        csv_path: str,
        image_dir: str | None,
        text_json: str | None,
        labels_required: bool = True,
        split_column: str | None = None,
        group_column: str | None = None,
    ) -> Records:
        """One CSV; splits and groups only matter for the main one, so test/predict CSVs need neither column."""
        texts_from_json = read_text_json(text_json) if self.uses_text and text_json else None
        return read_records(
            csv_path,
            id_column=self.id_column,
            label_column=self.label_column,
            labels_required=labels_required,
            image_index=ImageIndex(image_dir) if self.uses_image else None,
            image_column=self.image_column,
            text_json=texts_from_json,
            json_path=text_json if self.uses_text else None,
            text_column=self.text_column if self.uses_text else None,
            text_template=self.text_template if self.uses_text else None,
            split_column=split_column,
            group_column=group_column,
        )

    def _assign_splits(self, records: Records) -> list[str]:
        if records.splits is not None:
            splits = splits_from_column(records.splits, records.csv_path)
            if records.groups is not None:
                check_groups_disjoint(splits, records.groups, records.csv_path)
        else:
            groups = records.groups if records.groups is not None else records.ids
            splits = stratified_group_split(records.labels, groups, self.val_ratio, self.test_ratio, self.seed)
        needed = ["train"] + [s for s, r in (("val", self.val_ratio), ("test", self.test_ratio)) if r > 0]
        check_splits_present(splits, needed if records.splits is None else ["train", "val"], records.csv_path)
        return splits

    # ----------------------------------------------------------------------------- datasets
    def _tokenize(self, texts: Sequence[str], source: str) -> list[list[int]]:
        if not texts:  # an empty split (no test rows in the split column, val_ratio=0): the tokenizer fails on []
            return []
        ids = self.tokenizer(list(texts))["input_ids"]
        limit = self.max_length
        truncated = sum(len(x) > limit for x in ids)
        if truncated:
            rank_zero_warn(f"{truncated} of {len(ids)} texts in {source} exceed max_length={limit} and were truncated")
            ids = self.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
        return ids

    def _dataset(self, records: Records, labels: Sequence[int], train: bool) -> MultimodalDataset:
        make_transform = train_transform if train and self.augment else eval_transform
        return MultimodalDataset(
            ids=records.ids,
            labels=labels,
            image_paths=records.image_paths if self.uses_image else None,
            token_ids=self._tokenize(records.texts, str(records.csv_path)) if self.uses_text else None,
            transform=make_transform(self.image_size, self.mean, self.std),
            texts=records.texts if self.uses_text else None,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.uses_image and self.verify_images and not self._verified:
            # Whole CSVs, not splits, so that the rows in an error are the file's lines.
            for records in (self._table, *self._test_records[1:], self._predict_records):
                if records is not None:
                    verify_images(records.image_paths, records.csv_path)
            self._verified = True
        if stage in ("fit", None) and "train" not in self.datasets:
            self.datasets["train"] = self._dataset(self._records["train"], self._labels["train"], train=True)
        if stage in ("fit", "validate", None) and "val" not in self.datasets:
            self.datasets["val"] = self._dataset(self._records["val"], self._labels["val"], train=False)
        if stage in ("test", None) and "test" not in self.datasets:
            for name, records, labels in zip(self.test_set_names, self._test_records, self._test_labels, strict=True):
                self.datasets[name if name == "test" else f"test_{name}"] = self._dataset(records, labels, train=False)
        if stage in ("predict", None) and "predict" not in self.datasets:
            records = self._predict_records or self._records["test"]
            unlabelled = [-1] * len(records.ids)
            self.datasets["predict"] = self._dataset(records, unlabelled, train=False)

    # ----------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sampler = None
        if train and self.sampler == "balanced":
            # A DistributedSampler subclass: under DDP, Lightning keeps it instead of substituting its own.
            weights = class_balanced_weights(self._labels["train"])
            sampler = DistributedWeightedSampler(weights, seed=self.seed)
        elif not train and torch.distributed.is_available() and torch.distributed.is_initialized():
            # The default DistributedSampler pads with duplicates, which biases evaluation metrics.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate,
        )

    @property
    def collate(self) -> Collate:
        """The batch collate function (pads token ids with the tokenizer's pad id)."""
        return Collate(self.tokenizer.pad_token_id if self.tokenizer is not None else 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(self.datasets[n if n == "test" else f"test_{n}"], False) for n in self.test_set_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["predict"], train=False)


class DemoDataModule(MultimodalDataModule):
    """The embedded synthetic skin-lesion dataset, generated on first use into a cache directory.

    Args:
        root: where the dataset lives; default ``$MEDFUSION_CACHE/demo/...`` (``~/.cache/medfusion``).
        num_samples: number of images/reports.
        demo_image_size: side of the generated images.
        long_tail: HAM10000-like class proportions instead of balanced classes.
        demo_seed: seed of the generator.
        **kwargs: any :class:`MultimodalDataModule` option (modalities, batch_size, ...).
    """

    def __init__(
        self,
        root: str | None = None,
        num_samples: int = 2000,
        demo_image_size: int = 64,
        long_tail: bool = False,
        demo_seed: int = 0,
        image_size: int = 64,
        **kwargs: Any,
    ) -> None:
        name = f"n{num_samples}_s{demo_image_size}_seed{demo_seed}" + ("_longtail" if long_tail else "")
        out = Path(root) if root else default_cache_dir() / name
        ensure_demo_data(out, num_samples=num_samples, image_size=demo_image_size, seed=demo_seed, long_tail=long_tail)
        super().__init__(
            csv_path=str(out / "metadata.csv"),
            image_dir=str(out / "images"),
            text_json=str(out / "reports.json"),
            id_column="image_id",
            label_column="label",
            group_column="patient_id",
            image_size=image_size,
            **kwargs,
        )
