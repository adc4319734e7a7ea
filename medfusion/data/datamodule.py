"""LightningDataModules for image+text classification from a CSV (+ JSON) and an image folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medfusion.data.dataset import BadImagePolicy, Collate, MultimodalDataset
from medfusion.data.demo import default_cache_dir, ensure_demo_data
from medfusion.data.errors import DataError
from medfusion.data.images import ImageIndex, verify_images
from medfusion.data.loaders import EpochSeededLoader
from medfusion.data.options import check_data_options, check_demo_options
from medfusion.data.samplers import DistributedWeightedSampler, class_balanced_weights
from medfusion.data.splits import (
    check_groups_disjoint,
    check_splits_present,
    rare_class_warnings,
    splits_from_column,
    stratified_group_split,
)
from medfusion.data.table import (
    Records,
    infer_class_names,
    label_indices,
    read_records,
    resolve_equivalent_labels,
)
from medfusion.data.texts import read_text_json
from medfusion.data.tokenizer import WORDPIECE, build_tokenizer
from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from medfusion.runs.checkpoints import check_class_names, read_checkpoint, tokenizer_from_state
from medfusion.runs.resume import epoch_seed

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
    :meth:`setup`. ``data_report`` holds counts the run logs (``truncated_texts/<set>`` and, with
    ``allow_missing``, ``missing_images/<set>``, ``missing_texts/<set>``; sets: train, val, test, test_<name>,
    predict), filled as the datasets are built.

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
        csv_sep: the field separator of every CSV (``";"``, ``"\t"`` or ``"|"`` for files not comma-separated).
        na_values: cell values that mean "missing" besides an empty cell (e.g. ``["NA", "n/a"]``); by default only
            empty cells are missing, so ``NA``, ``None`` or ``null`` are text (a label ``NA`` is a class).
        class_names: the classes and their order; default: labels found in the CSV, sorted.
        merge_equivalent_labels: labels that differ only in case, surrounding spaces or number format (``B`` and
            ``b``, ``1`` and ``1.0``) are an error listing them (and, when ``class_names`` are known, the class meant);
            with ``true`` they are merged, with a warning, into the class so spelled or else into the most frequent
            spelling (ties: the first seen), in the training CSV and in every test set.
        modalities: which inputs to load: ``["image", "text"]``, ``["image"]`` or ``["text"]``.
        allow_missing: modalities a sample may lack (default none: a sample without one is an error). An image is
            missing when its ``image_column`` cell is empty (a path to no file stays an error); a text when the
            JSON has no entry for the id or the text (or text column cell) is empty. Batches mark them in
            ``image_present``/``text_present``; a sample with neither is an error. Needs a model that handles
            absent inputs (``MultimodalClassifier``).
        val_ratio: fraction of groups for validation when there is no split column (``0 <= val_ratio < 1``).
        test_ratio: fraction of groups for testing when there is no split column (``val_ratio + test_ratio < 1``).
            Classes with no row in the val or test split, or (random splits) too few rows for all three, are
            warned about: their per-class metrics are undefined there.
        seed: seed of the random split.
        test_sets: external test sets by name, each tested on its own (metrics ``test_<name>/...``).
        robustness: add two test sets built from the internal test split, ``no_text`` and ``no_image``, in which
            that modality is absent for every sample (metrics ``test_no_text/...``, ``test_no_image/...``).
            Needs both modalities.
        predict_csv: rows to predict (labels optional); default: the test split.
        image_size: side of the square model input.
        augment: random crops, flips and colour jitter in training.
        mean: normalisation mean (ImageNet by default, as timm's pretrained weights expect).
        std: normalisation std.
        verify_images: decode-check every image file in :meth:`setup`.
        on_bad_image: an image that fails to decode while batches are loaded (corrupted after the check, or
            ``verify_images: false``): ``"raise"`` a :class:`DataError` naming the file and CSV line, or ``"skip"``:
            replace the sample by the next one that loads, warn naming the file once, and count the replacements
            in the batches' ``replaced`` (logged as ``train/skipped_images``, ``val/skipped_images``,
            ``test/skipped_images`` sums per epoch); a :class:`DataError` if no image of the set loads.
        tokenizer: ``"wordpiece"`` (trained on the training texts, offline) or a hub name / local
            path of a pretrained tokenizer (use the text encoder's).
        vocab_size: target size of the trained WordPiece vocabulary.
        max_length: texts are truncated to this many tokens (the count is warned and in ``data_report``).
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        from_checkpoint: a trained model's checkpoint: its class names (and order) and text tokenizer are used
            instead of being inferred and retrained, so ``test``/``predict`` need no training data (leave
            ``csv_path`` unset and give ``predict_csv`` or ``test_sets``); labels outside its classes are errors.
            ``medfusion test|predict --ckpt_path`` sets it to that checkpoint.
        feature_cache: a directory (e.g. ``~/.cache/medfusion/features``) for the outputs of frozen encoders
            (``model.freeze_encoders: true``): each split's features are computed once, stored there memory-mapped
            under a hash of the encoder and the data, reused by every later epoch and run, and recomputed when
            either changes (see ``models/feature_cache.py``). The loaders then yield features, not images and
            texts, so training runs the fusion and head only; they read in the main process (``num_workers``
            applies to computing the cache). Caching excludes what changes the encoders' input or output per
            step: ``augment`` (set it false), trained encoders and test-time augmentation. The datamodule computes
            nothing itself (data knows no model): a medfusion model in a Trainer serves the features through
            :meth:`use_datasets`; without a Trainer call ``cached_features(model, datamodule, name)`` of the
            models layer's ``feature_cache`` module.
        sampler: training order: ``"shuffle"`` (each sample once per epoch) or ``"balanced"`` (as many
            draws per epoch as training samples, with replacement, each class equally likely; seeded by
            ``seed`` and the epoch; DDP ranks share one draw). Do not combine ``"balanced"`` with a
            class-aware loss (class weights, focal ``alpha``, logit adjustment): double correction.
    """

    def __init__(
        self,
        csv_path: str | None = None,
        image_dir: str | None = None,
        text_json: str | None = None,
        text_column: str | None = None,
        text_template: str | None = None,
        id_column: str = "image_id",
        label_column: str = "label",
        image_column: str | None = None,
        split_column: str | None = None,
        group_column: str | None = None,
        csv_sep: str = ",",
        na_values: list[str] | None = None,
        class_names: list[str] | None = None,
        merge_equivalent_labels: bool = False,
        modalities: list[Modality] | None = None,
        allow_missing: list[Modality] | None = None,
        val_ratio: float = 0.15,
        test_ratio: float = 0.15,
        seed: int = 42,
        test_sets: dict[str, TestSet] | None = None,
        robustness: bool = False,
        predict_csv: str | None = None,
        image_size: int = 224,
        augment: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        verify_images: bool = True,
        on_bad_image: BadImagePolicy = "raise",
        tokenizer: str = WORDPIECE,
        vocab_size: int = 2000,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        sampler: SamplerKind = "shuffle",
        from_checkpoint: str | None = None,
        feature_cache: str | None = None,
    ) -> None:
        super().__init__()
        check_data_options(
            batch_size=batch_size,
            image_size=image_size,
            max_length=max_length,
            vocab_size=vocab_size,
            num_workers=num_workers,
            val_ratio=val_ratio,
            test_ratio=test_ratio,
            csv_sep=csv_sep,
        )
        self.csv_sep, self.na_values = csv_sep, list(na_values or [])
        self.merge_equivalent_labels = merge_equivalent_labels
        if feature_cache is not None and augment:
            raise ValueError(
                "data.feature_cache stores features of the un-augmented images, computed once, so it excludes "
                "data.augment (random crops and flips change every epoch). Fix: set data.augment: false, or drop "
                "data.feature_cache to train with augmentation."
            )
        self.feature_cache = feature_cache
        self._serve: Callable[[str, Dataset], Dataset] | None = None  # see use_datasets
        if sampler not in ("shuffle", "balanced"):
            raise ValueError(f"sampler must be 'shuffle' or 'balanced', got {sampler!r}")
        self.sampler = sampler
        self.id_column, self.label_column, self.group_column = id_column, label_column, group_column
        self.image_column, self.text_column, self.text_template = image_column, text_column, text_template
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed
        self.image_size, self.augment, self.mean, self.std = image_size, augment, mean, std
        self.verify_images, self.max_length = verify_images, max_length
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.batch_size, self.num_workers = batch_size, num_workers
        self.modalities = list(modalities or ["image", "text"])
        if not self.modalities or set(self.modalities) - {"image", "text"}:
            raise ValueError(f"modalities must be a non-empty subset of ['image', 'text'], got {modalities}")
        if "image" in self.modalities and image_dir is None:
            raise DataError("Images are used but data.image_dir is not set. Fix: set it, or use modalities: [text].")
        self.uses_image = "image" in self.modalities
        self.uses_text = "text" in self.modalities
        self.allow_missing = list(allow_missing or [])
        if set(self.allow_missing) - set(self.modalities):
            raise ValueError(f"allow_missing {allow_missing} must be a subset of modalities {self.modalities}")
        if "image" in self.allow_missing and image_column is None:
            raise DataError(
                "data.allow_missing includes 'image', but images are found by id: only an empty "
                "data.image_column cell marks a sample without an image. "
                "Fix: set data.image_column, or drop 'image' from data.allow_missing."
            )
        if robustness and set(self.modalities) != {"image", "text"}:
            raise ValueError("robustness (no_text and no_image test sets) needs modalities: [image, text]")
        self.data_report: dict[str, int] = {}

        trained = read_checkpoint(from_checkpoint)["medfusion"] if from_checkpoint else None  # format checked
        if csv_path is None and trained is None:
            raise DataError("data.csv_path is not set. Fix: set it, or set data.from_checkpoint to a trained model.")
        if csv_path is None and not (predict_csv or test_sets):
            raise DataError("Without data.csv_path there is nothing to read. Fix: set data.predict_csv or test_sets.")
        self.class_names: list[str] = list(trained["class_names"]) if trained else list(class_names or [])
        if trained and class_names:
            check_class_names(trained["class_names"], class_names, from_checkpoint)
        self._table: Records | None = None
        empty_split = Records(Path(csv_path or "none"), [], [], None, None, None, None, [])
        self._records: dict[str, Records] = dict.fromkeys(("train", "val", "test"), empty_split)
        self._labels: dict[str, list[int]] = {s: [] for s in ("train", "val", "test")}
        self.test_set_names: list[str] = []
        self._test_records: list[Records] = []
        self._test_labels: list[list[int]] = []
        self.class_counts: list[int] | None = trained["class_counts"] if trained else None
        if csv_path is not None:
            self._read_training_csv(csv_path, image_dir, text_json, split_column, group_column, trained is not None)
        for name, spec in (test_sets or {}).items():
            ext = self._read(spec.csv_path, spec.image_dir or image_dir, spec.text_json or text_json)
            ext = self._equivalent_labels(ext)
            self.test_set_names.append(name)
            self._test_records.append(ext)
            self._test_labels.append(label_indices(ext, self.class_names))
        self.robustness_sets = ["no_text", "no_image"] if robustness else []
        taken = [n for n in self.robustness_sets if n in self.test_set_names]
        if taken:
            raise ValueError(f"test_sets {taken} clash with the robustness test sets: rename them")
        self.test_set_names += self.robustness_sets
        self._predict_records = (
            self._read(predict_csv, image_dir, text_json, labels_required=False) if predict_csv else None
        )

        self.tokenizer = None
        self.vocab_size: int | None = None
        if self.uses_text and trained and trained.get("tokenizer"):
            self.tokenizer = tokenizer_from_state(trained["tokenizer"])  # exactly the model's, retrained on nothing
        elif self.uses_text:
            texts = [t for t in (self._records["train"].texts or []) if t is not None]
            self.tokenizer = build_tokenizer(tokenizer, texts, vocab_size)
        if self.tokenizer is not None:
            self.vocab_size = len(self.tokenizer)
        self._verified = False
        self.datasets: dict[str, Dataset] = {}

    def _read_training_csv(
        self,
        csv_path: str,
        image_dir: str | None,
        text_json: str | None,
        split_column: str | None,
        group_column: str | None,
        classes_from_checkpoint: bool,
    ) -> None:
        """Read the main CSV into train/val/test splits (class names inferred unless already known)."""
        records = self._table = self._equivalent_labels(
            self._read(csv_path, image_dir, text_json, split_column=split_column, group_column=group_column)
        )
        if not self.class_names:
            self.class_names = infer_class_names(records.labels)
        labels = label_indices(records, self.class_names)
        splits = self._assign_splits(records)
        self._records = {
            s: records.subset([r for r, x in enumerate(splits) if x == s]) for s in ("train", "val", "test")
        }
        self._labels = {s: [labels[r] for r, x in enumerate(splits) if x == s] for s in ("train", "val", "test")}
        counts = Counter(self._labels["train"])
        self.class_counts = [counts.get(i, 0) for i in range(self.num_classes)]
        empty = [self.class_names[i] for i, c in enumerate(self.class_counts) if c == 0]
        if empty and not classes_from_checkpoint:
            raise DataError(f"Classes {empty} have no training rows in {csv_path}. Fix: add rows or drop the classes.")
        needed = 1 + (self.val_ratio > 0) + (self.test_ratio > 0) if records.splits is None else 0
        for warning in rare_class_warnings(self._labels, self.class_names, csv_path, needed):
            rank_zero_warn(warning)
        self.test_set_names = ["test"]
        self._test_records = [self._records["test"]]
        self._test_labels = [self._labels["test"]]

    def _equivalent_labels(self, records: Records) -> Records:
        """``records`` with labels equivalent to a class or to each other merged (``merge_equivalent_labels``),
        else a :class:`DataError` naming them."""
        records, merged = resolve_equivalent_labels(records, self.class_names, self.merge_equivalent_labels)
        if merged:
            rank_zero_warn(f"data.merge_equivalent_labels: {merged}")
        return records

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def test_sizes(self) -> dict[str, int]:
        """Rows per test set read from CSVs (``test``, then the external ``test_sets``), before any is set up."""
        names = self.test_set_names[: len(self._test_records)]
        return {name: len(records.ids) for name, records in zip(names, self._test_records, strict=True)}

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
            allow_missing=self.allow_missing,
            sep=self.csv_sep,
            na_values=self.na_values,
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
    def _tokenize(self, texts: Sequence[str | None], name: str, source: str) -> list[list[int] | None]:
        """Token ids per text (None stays None); counts the truncated ones in ``data_report``."""
        present = [t for t in texts if t is not None]
        ids = iter(self.tokenizer(present)["input_ids"] if present else [])  # the tokenizer fails on []
        tokens = [None if t is None else next(ids) for t in texts]
        limit = self.max_length
        truncated = sum(len(x) > limit for x in tokens if x is not None)
        self.data_report[f"truncated_texts/{name}"] = truncated
        if truncated:
            rank_zero_warn(
                f"{truncated} of {len(present)} texts in {source} exceed max_length={limit} and were truncated"
            )
            ids = iter(self.tokenizer(present, truncation=True, max_length=limit)["input_ids"])
            tokens = [None if t is None else next(ids) for t in texts]
        return tokens

    def _dataset(self, records: Records, labels: Sequence[int], name: str) -> MultimodalDataset:
        train = name == "train"
        make_transform = train_transform if train and self.augment else eval_transform
        if "image" in self.allow_missing:
            self.data_report[f"missing_images/{name}"] = sum(p is None for p in records.image_paths)
        if "text" in self.allow_missing:
            self.data_report[f"missing_texts/{name}"] = sum(t is None for t in records.texts)
        return MultimodalDataset(
            ids=records.ids,
            labels=labels,
            image_paths=records.image_paths if self.uses_image else None,
            token_ids=self._tokenize(records.texts, name, str(records.csv_path)) if self.uses_text else None,
            transform=make_transform(self.image_size, self.mean, self.std),
            texts=records.texts if self.uses_text else None,
            csv_path=records.csv_path,
            rows=records.rows,
            # predictions keep every requested id: a sample that cannot be read gets an error row, not a substitute
            on_bad_image="mark" if name == "predict" and self.on_bad_image == "skip" else self.on_bad_image,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.uses_image and self.verify_images and not self._verified:
            # Whole CSVs, not splits, so that the rows in an error are the file's lines.
            for records in (self._table, *self._test_records[1:], self._predict_records):
                if records is not None:
                    verify_images(records.image_paths, records.csv_path)
            self._verified = True
        if stage in ("fit", None) and "train" not in self.datasets:
            self.datasets["train"] = self._dataset(self._records["train"], self._labels["train"], "train")
        if stage in ("fit", "validate", None) and "val" not in self.datasets:
            self.datasets["val"] = self._dataset(self._records["val"], self._labels["val"], "val")
        if stage in ("test", None) and "test" not in self.datasets:
            read = self.test_set_names[: len(self._test_records)]  # the robustness sets come after these
            for name, records, labels in zip(read, self._test_records, self._test_labels, strict=True):
                key = name if name == "test" else f"test_{name}"
                self.datasets[key] = self._dataset(records, labels, key)
            for name in self.robustness_sets:
                self.datasets[f"test_{name}"] = self.datasets["test"].without(name.removeprefix("no_"))
        if stage in ("fit", "validate") and self._table is None:
            raise DataError(f"'{stage}' needs the training CSV. Fix: set data.csv_path.")
        if stage in ("predict", None) and "predict" not in self.datasets:
            records = self._predict_records or self._records["test"]
            unlabelled = [-1] * len(records.ids)
            self.datasets["predict"] = self._dataset(records, unlabelled, "predict")

    # ----------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sampler = None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if train and self.sampler == "balanced":
            # A DistributedSampler subclass: under DDP, Lightning keeps it instead of substituting its own.
            weights = class_balanced_weights(self._labels["train"])
            sampler = DistributedWeightedSampler(weights, seed=self.seed)
        elif train and distributed:
            # Our own, so that the loader sets its epoch before the first draw (Lightning's is set after).
            sampler = DistributedSampler(dataset, shuffle=True, seed=epoch_seed(0))
        elif not train and distributed:
            # The default DistributedSampler pads with duplicates, which biases evaluation metrics.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        # epochs whose batches are done: the coming epoch (Lightning resumes from a train-epoch-end checkpoint
        # with current_epoch one behind until its loop starts; a validation-end one restores the loader's state)
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if train and self.trainer is not None else 0
        loader, options = (EpochSeededLoader, {"epoch": epoch}) if train else (DataLoader, {})
        # a served dataset may declare how it is read (see use_datasets)
        workers = 0 if getattr(dataset, "main_process_only", False) else self.num_workers
        collate = getattr(dataset, "collate_fn", None) or self.collate
        return loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0 and not train,  # fresh workers: seeded per epoch
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
            **options,
        )

    def use_datasets(self, fn: Callable[[str, Dataset], Dataset] | None) -> None:
        """Serve ``fn(name, dataset)`` instead of each dataset to the loaders (``None``: the datasets again).

        The hook by which a model changes what the loaders read without the datamodule knowing the model: with
        ``feature_cache`` a medfusion model installs one (in its ``setup``, which Lightning calls after this
        datamodule's and before the loaders) that serves each split's cached encoder features. ``name`` is the
        dataset's key in :attr:`datasets` (``"train"``, ``"val"``, ``"test"``, ``"test_<set>"``, ``"predict"``),
        called each time a loader is built. A served dataset may declare how it is loaded: ``collate_fn``, used
        instead of :attr:`collate`, and ``main_process_only = True`` for no worker processes (``num_workers`` 0).
        """
        self._serve = fn

    def _data(self, name: str) -> Dataset:
        """What the loader of dataset ``name`` serves: the dataset, or what the :meth:`use_datasets` hook makes of
        it."""
        if self._serve is not None:
            return self._serve(name, self.datasets[name])
        if self.feature_cache is not None:
            raise RuntimeError(
                "data.feature_cache needs the model's encoders: use the loaders inside a Trainer with a medfusion "
                "model, or call cached_features(model, datamodule, name) from the models package's feature_cache "
                "module"
            )
        return self.datasets[name]

    @property
    def collate(self) -> Collate:
        """The batch collate function: pads token ids with the tokenizer's pad id; an absent text becomes the
        tokenizer's encoding of ``""`` (e.g. ``[CLS] [SEP]``), an absent image zeros of the model input size."""
        if self.tokenizer is None:
            return Collate(0, image_shape=(3, self.image_size, self.image_size))
        return Collate(
            self.tokenizer.pad_token_id,
            missing_text_ids=tuple(self.tokenizer("")["input_ids"]),
            image_shape=(3, self.image_size, self.image_size),
        )

    def train_dataloader(self) -> DataLoader:
        """An :class:`EpochSeededLoader`: each epoch's order, augmentation and dropout are reseeded from the run's
        seed and the epoch, and its epoch counter travels in checkpoints, so a resumed run repeats them exactly."""
        return self._loader(self._data("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._data("val"), train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(self._data(n if n == "test" else f"test_{n}"), False) for n in self.test_set_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._data("predict"), train=False)


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
        check_demo_options(num_samples, demo_image_size, long_tail)
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
