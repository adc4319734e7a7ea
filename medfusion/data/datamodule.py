"""The LightningDataModule of named modalities (images, text, tabular) from a CSV, a JSON of texts and an image
folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from medfusion.data.cache_dir import cache_root
from medfusion.data.crops import Crops, crop_specs
from medfusion.data.dataset import BadImagePolicy, Collate, MultimodalDataset
from medfusion.data.distributed import once_per_job
from medfusion.data.errors import ConfigError, DataError
from medfusion.data.image_cache import CachedImages, image_entry
from medfusion.data.knowledge import knowledge_spec, knowledge_state
from medfusion.data.loaders import SamplerKind, make_loader
from medfusion.data.modalities import check_allow_missing, resolve_modalities
from medfusion.data.options import check_data_options
from medfusion.data.reader import CsvReader, SplitOptions, read_all
from medfusion.data.setup_cache import load_or_read, setup_key
from medfusion.data.slices import replicated, slice_specs
from medfusion.data.state import check_same_state, find_data_state, mark
from medfusion.data.studies import check_study_options
from medfusion.data.table import Records
from medfusion.data.tabular import UNKNOWN, TabularPreprocessor, TabularSpec
from medfusion.data.test_sets import TestSet
from medfusion.data.token_ids import TokenIds
from medfusion.data.tokenizer import WORDPIECE
from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, cached_transform, eval_transform, train_transform
from medfusion.data.verify import VerifiedFiles, verify_images
from medfusion.runs.checkpoints import check_class_names, read_checkpoint, tokenizer_from_state, tokenizer_state

# Options that do not change what is read from the CSVs (so not part of the set-up cache's key).
_RUN_OPTIONS = {
    "self",
    "__class__",
    "image_size",
    "augment",
    "mean",
    "std",
    "verify_images",
    "cache",
    "cache_dir",
    "on_bad_image",
    "batch_size",
    "num_workers",
    "sampler",
    "feature_cache",
    "image_cache",
}


class MultimodalDataModule(L.LightningDataModule):
    """Classification data with named modalities from the layout users have: a CSV (with tabular columns), a JSON
    of texts, an image folder (one or more images per case).

    Everything is read and validated when the module is built (bad input fails once, naming the file, rows and
    fix), so ``num_classes``, ``class_names``, ``class_counts``, ``vocab_size`` and ``modality_specs`` (names,
    kinds, sizes) can be linked into the model by the CLI. Image decoding is checked in :meth:`setup`.
    ``data_report`` holds counts the run logs (``truncated_texts/<set>``, ``unknown_categories/<set>`` and, with
    ``allow_missing``, ``missing_<name>/<set>``; sets: train, val, test, test_<name>, predict), filled as the
    datasets are built. What a checkpoint needs from the data travels in :meth:`state_dict`.

    Args:
        csv_path: one row per sample with an id and a label column.
        image_dir: root of the image files; the id (or ``image_column``) is a path relative to
            it, with or without extension, searched recursively by file stem as a fallback.
        text_json: a JSON file ``{id: text}``.
        text_column: a CSV column holding the text.
        text_template: builds the text from columns, e.g.
            ``"{age}-year-old {sex}, lesion on the {localization}."`` (missing values read "unknown").
        knowledge: knowledge-augmented narratives, ``{corpus: FILE, top_k: 2, method: tfidf | bm25, exclude: [...]}``:
            each text (e.g. the ``text_template`` narrative) followed by its ``top_k`` best-matching passages of the
            corpus (a JSON ``{id: passage}`` or an ``id,text`` CSV); passages naming a class are never used
            (leakage); the passage ids per sample go to ``retrieved_passages.csv``. See :mod:`medfusion.data.knowledge`.
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
        image_columns: further image modalities by name, each with its CSV column of paths relative to
            ``image_dir`` (``{frontal: frontal_path, lateral: lateral_path}``; two views of a case).
        crops: image modalities cut from another one around the lesion, at the file's resolution (global-local
            input): ``{local: {source: image, box_columns: [x0, y0, x1, y1], units: pixels | fractions, margin:
            0.1}}`` or ``{local: {source: image, mask_column: mask_path}}`` (the mask's bounding box); see
            :mod:`medfusion.data.crops`. A box with ``x1 <= x0`` or ``y1 <= y0`` is an error naming its rows; one
            reaching outside its image is clipped, with a warning.
        slices: image modalities read as 2.5D stacks ``[K, 3, S, S]``: ``{image: {neighbours: 2}}`` (the row's
            file and the 2 before and after it by the number in its name; at a volume's edge the nearest slice is
            replicated, counted as ``replicated_slices/<set>``) or ``{image: {column: slice_files, sep: ";"}}``
            (the files a column lists, in order); see :mod:`medfusion.data.slices`. Random augmentations are the
            same for every slice of a stack.
        study_column: a column of study ids: the rows of a study (1..M images) are one sample, with one label and
            one prediction; its text and tabular values are its first row's, and its rows must agree on label,
            split and group (see :mod:`medfusion.data.studies`). The model pools each study's images
            (``model.study_pooling``). Splits, metrics and predictions are per study.
        study_max_images: keep at most this many images of a study (the first ones, in row order).
        numeric_columns: numeric clinical variables of the ``tabular`` modality (``[age, psa]``), standardised
            with the mean and std of the training rows only; a missing value is flagged, never a silent 0.
        categorical_columns: categorical variables of the ``tabular`` modality (``[sex, localization]``), read
            as text; a category not seen in training maps to an unknown index (counted in one warning and in
            ``data_report`` as ``unknown_categories/<set>``), an empty cell to a missing index. With
            ``from_checkpoint`` and neither column list set, the checkpoint's columns are used.
        modalities: which named inputs to load, e.g. ``[image, text]``, ``[image, tabular]``, ``[frontal,
            lateral, text]``; default: every one the options describe (``image`` with ``image_dir`` unless
            ``image_columns`` are given, then those; ``text`` with a text source; ``tabular`` with tabular columns).
            Batches hold one entry per name and ``present[name]``.
        allow_missing: modality names a sample may lack (default none: a sample without one is an error). An image
            is missing when its path cell (``image_column`` or its ``image_columns`` column) is empty (a path to no
            file stays an error); a text when the JSON has no entry for the id or the text (or text column cell) is
            empty; the tabular inputs when every tabular cell of the row is empty. Batches mark them in
            ``present[name]``; a sample with none of its modalities is an error. Needs a model that handles
            absent inputs (``MultimodalClassifier``).
        val_ratio: fraction of groups for validation when there is no split column (``0 <= val_ratio < 1``).
        test_ratio: fraction of groups for testing when there is no split column (``val_ratio + test_ratio < 1``).
        train_fraction: train on this fraction ``0 < f <= 1`` of the training rows, for learning curves: stratified
            by class, drawn by group with ``seed``, nested (a larger fraction holds the smaller ones); validation and
            test are unchanged (:func:`~medfusion.data.splits.training_subset`).
            Classes with no row in the val or test split, or (random splits) too few rows for all three, are
            warned about: their per-class metrics are undefined there.
        seed: seed of the random split.
        test_sets: external test sets by name, each tested on its own (metrics ``test_<name>/...``).
        robustness: add one test set per modality built from the internal test split, ``no_<name>``, in which
            that modality is absent for every sample (metrics ``test_no_image/...``, ``test_no_text/...``,
            ``test_no_tabular/...``). Needs two modalities or more.
        predict_csv: rows to predict (labels optional); default: the test split.
        image_size: side of the square model input.
        augment: random crops, flips and colour jitter in training.
        mean: normalisation mean (ImageNet by default, as timm's pretrained weights expect).
        std: normalisation std.
        verify_images: decode-check every image file in :meth:`setup` (once per job: on rank zero under DDP; over
            worker processes when there are many; files that passed in an earlier run and are unchanged since, by
            path, size, modification time and inode, are skipped when ``cache`` is on).
        cache: reuse what depends only on unchanged inputs, kept in ``cache_dir``: the read and checked data (set-up
            cache: loaded by the other DDP ranks and by later runs, see ``data/setup_cache.py``) and the image
            check's record of files that passed.
        cache_dir: where ``cache`` keeps it; default ``$MEDFUSION_CACHE``, else ``~/.cache/medfusion``.
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
        from_checkpoint: a trained model's checkpoint: its data state (:meth:`state_dict`: class names and order,
            modalities, text tokenizer, tabular statistics and category maps) is used instead of being inferred
            and refitted, so ``test``/``predict`` need no training data (leave ``csv_path`` unset and give
            ``predict_csv`` or ``test_sets``); labels outside its classes are errors. ``medfusion
            test|predict --ckpt_path`` sets it to that checkpoint.
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
        image_cache: a directory (e.g. ``~/.cache/medfusion/images``) for the decoded-image cache: each image
            decoded, resized and centre-cropped to ``image_size`` once (uint8, memory-mapped, keyed by every file's
            path, size and modification time and the size; once per job under DDP), then read by every epoch and run
            instead of its file. Evaluation inputs are exactly the uncached ones; ``augment`` then crops within the
            cached square (see ``data/image_cache.py``). Needs ``3 x image_size^2`` bytes per image on disk.
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
        knowledge: dict[str, Any] | None = None,
        id_column: str = "image_id",
        label_column: str = "label",
        image_column: str | None = None,
        image_columns: dict[str, str] | None = None,
        crops: dict[str, dict[str, Any]] | None = None,
        slices: dict[str, dict[str, Any]] | None = None,
        study_column: str | None = None,
        study_max_images: int | None = None,
        numeric_columns: list[str] | None = None,
        categorical_columns: list[str] | None = None,
        split_column: str | None = None,
        group_column: str | None = None,
        csv_sep: str = ",",
        na_values: list[str] | None = None,
        class_names: list[str] | None = None,
        merge_equivalent_labels: bool = False,
        modalities: list[str] | None = None,
        allow_missing: list[str] | None = None,
        val_ratio: float = 0.15,
        train_fraction: float = 1.0,
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
        cache: bool = True,
        cache_dir: str | None = None,
        on_bad_image: BadImagePolicy = "raise",
        tokenizer: str = WORDPIECE,
        vocab_size: int = 2000,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        sampler: SamplerKind = "shuffle",
        from_checkpoint: str | None = None,
        feature_cache: str | None = None,
        image_cache: str | None = None,
    ) -> None:
        options = {k: v for k, v in locals().items() if k not in _RUN_OPTIONS}  # what shapes the reading
        super().__init__()
        check_data_options(
            batch_size=batch_size,
            image_size=image_size,
            max_length=max_length,
            vocab_size=vocab_size,
            num_workers=num_workers,
            val_ratio=val_ratio,
            test_ratio=test_ratio,
            train_fraction=train_fraction,
            csv_sep=csv_sep,
        )
        self.na_values = list(na_values or [])
        if feature_cache is not None and augment:
            raise ValueError(
                "data.feature_cache stores features of the un-augmented images, computed once, so it excludes "
                "data.augment (random crops and flips change every epoch). Fix: set data.augment: false, or drop "
                "data.feature_cache to train with augmentation."
            )
        self.feature_cache, self.image_cache = feature_cache, image_cache
        self._serve: Callable[[str, Dataset], Dataset] | None = None  # see use_datasets
        if sampler not in ("shuffle", "balanced"):
            raise ValueError(f"sampler must be 'shuffle' or 'balanced', got {sampler!r}")
        self.sampler = sampler
        self.image_column = image_column
        self.val_ratio, self.test_ratio, self.seed = val_ratio, test_ratio, seed
        self.image_size, self.augment, self.mean, self.std = image_size, augment, mean, std
        self.group_column = group_column
        self.verify_images, self.max_length = verify_images, max_length
        self.cache, self.cache_dir = cache, cache_dir
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.batch_size, self.num_workers = batch_size, num_workers
        self.image_columns = dict(image_columns or {})
        file_images = list(self.image_columns) or (["image"] if image_dir else [])
        self.crops = crop_specs(crops, file_images)
        self.slices = slice_specs(slices, file_images)
        check_study_options(study_column, study_max_images, list(self.crops), list(self.slices))
        self.study_column = study_column
        trained = find_data_state(read_checkpoint(from_checkpoint), from_checkpoint) if from_checkpoint else None
        spec = None
        if numeric_columns or categorical_columns:
            spec = TabularSpec(list(numeric_columns or []), list(categorical_columns or []))
        elif trained is not None and trained.get("tabular") is not None:  # the checkpoint's columns
            spec = TabularPreprocessor.from_state(trained["tabular"]).spec
        has_text = any(source is not None for source in (text_json, text_column, text_template))
        self.modality_kinds = resolve_modalities(
            modalities,
            image_dir=image_dir,
            image_columns=self.image_columns,
            has_text=has_text,
            has_tabular=bool(spec),
            crops=list(self.crops),
        )
        self.modalities = list(self.modality_kinds)
        self.image_names = [name for name, kind in self.modality_kinds.items() if kind == "image"]
        self.uses_text = "text" in self.modality_kinds
        self.knowledge = knowledge_spec(knowledge)
        self.knowledge_state = knowledge_state(self.knowledge)
        if self.knowledge is not None and not self.uses_text:
            raise ConfigError(
                "data.knowledge appends passages to each sample's text, but the data has no text modality. Fix: set "
                "data.text_template (a narrative from the CSV columns), text_column or text_json, or drop "
                "data.knowledge."
            )
        self.tabular_spec = spec if "tabular" in self.modality_kinds else None
        self.allow_missing = check_allow_missing(allow_missing, self.modality_kinds, self._path_column)
        if robustness and len(self.modalities) < 2:
            raise ValueError(
                f"robustness (one no_<name> test set per modality) needs two modalities or more, got {self.modalities}"
            )
        self.data_report: dict[str, int] = {}

        if csv_path is None and trained is None:
            raise DataError("data.csv_path is not set. Fix: set it, or set data.from_checkpoint to a trained model.")
        if csv_path is None and not (predict_csv or test_sets):
            raise DataError("Without data.csv_path there is nothing to read. Fix: set data.predict_csv or test_sets.")
        if trained is not None:
            check_same_state(
                {"modalities": trained["modalities"], "knowledge": trained.get("knowledge")},
                {"modalities": self.modality_kinds, "knowledge": self.knowledge_state},
            )
        if trained and class_names:
            check_class_names(trained["class_names"], class_names, from_checkpoint)
        read_images = [name for name in self.image_names if name not in self.crops]
        read_images += [s.source for s in self.crops.values() if s.source not in read_images]
        reader = CsvReader(
            id_column,
            label_column,
            {name: self._path_column(name) for name in read_images},
            self.uses_text,
            text_column,
            text_template,
            self.tabular_spec,
            self.allow_missing,
            csv_sep,
            self.na_values,
            merge_equivalent_labels,
            {name: spec for name, spec in self.crops.items() if name in self.image_names},
            {name: spec for name, spec in self.slices.items() if name in self.image_names},
            study_column,
            study_max_images,
            self.knowledge,
        )
        read = partial(
            read_all,
            reader,
            csv_path,
            image_dir,
            text_json,
            SplitOptions(split_column, group_column, val_ratio, test_ratio, seed, train_fraction),
            list(trained["class_names"]) if trained else list(class_names or []),
            test_sets=dict(test_sets or {}),
            predict_csv=predict_csv,
            trained=trained,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            max_length=max_length,
        )
        # Once per job and per change of the inputs: a DDP rank started after rank zero, or a later run, loads it.
        self.read_from_cache = False
        if cache:
            sets = list((test_sets or {}).values())
            files = [
                csv_path,
                text_json,
                predict_csv,
                from_checkpoint,
                self.knowledge.corpus if self.knowledge else None,
                *(f for t in sets for f in (t.csv_path, t.text_json)),
            ]
            trees = [image_dir, *(t.image_dir for t in sets)] if self.image_names else []
            key = setup_key(options, files, trees)
            data, self.read_from_cache = load_or_read(cache_root(cache_dir), key, read)
        else:
            data = read()
        self._table, self._records, self._labels = data.table, data.records, data.labels
        self.class_names, self.class_counts, self.tabular = data.class_names, data.class_counts, data.tabular
        # no order given: sorted as strings, unless every label is a whole number (then by value)
        self.class_order_sorted = not (class_names or trained) and not all(
            name.lstrip("-").isdigit() for name in self.class_names
        )
        main = [("test", data.records["test"], data.labels["test"])] if data.table is not None else []
        self.test_set_names = [name for name, _, _ in (*main, *data.tests)]
        self._test_records = [records for _, records, _ in (*main, *data.tests)]
        self._test_labels = [labels for _, _, labels in (*main, *data.tests)]
        self.robustness_sets = [f"no_{name}" for name in self.modalities] if robustness else []
        taken = [n for n in self.robustness_sets if n in self.test_set_names]
        if taken:
            raise ValueError(f"test_sets {taken} clash with the robustness test sets: rename them")
        self.test_set_names += self.robustness_sets
        self._predict_records = data.predict
        self.tokenizer = data.tokenizer
        self.vocab_size = len(self.tokenizer) if self.tokenizer is not None else None
        self._truncated = data.truncated
        self._verified = False
        self.datasets: dict[str, Dataset] = {}

    def _path_column(self, name: str) -> str | None:
        """The CSV column of image modality ``name``'s paths (None: found by id); a crop's is its source's."""
        if name in self.crops:
            name = self.crops[name].source
        return self.image_columns.get(name, self.image_column if name == "image" else None)

    def retrieved_passages(self) -> list[tuple[str, str, list[str]]]:
        """``(set, id, passage ids)`` per sample of every set read, the knowledge passages appended to its text
        (``data.knowledge``); empty without."""
        if self.knowledge is None:
            return []
        sets = dict(self._records) if self._table is not None else {}
        sets.update(zip(self.test_set_names, self._test_records, strict=False))  # the robustness sets come after
        if self._predict_records is not None:
            sets["predict"] = self._predict_records
        return [
            (name, sample_id, list(found))
            for name, records in sets.items()
            if records.passages is not None
            for sample_id, found in zip(records.ids, records.passages, strict=True)
        ]

    @property
    def has_predict_csv(self) -> bool:
        """Whether the ``predict`` set is a prediction CSV (else it is the test split)."""
        return self._predict_records is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def test_sizes(self) -> dict[str, int]:
        """Rows per test set read from CSVs (``test``, then the external ``test_sets``), before any is set up."""
        names = self.test_set_names[: len(self._test_records)]
        return {name: len(records.ids) for name, records in zip(names, self._test_records, strict=True)}

    @property
    def modality_specs(self) -> dict[str, dict[str, Any]]:
        """Per modality name, its kind and the sizes its encoder needs (linked into the model by the CLI):
        ``{"kind": "image"}``, ``{"kind": "text", "vocab_size": V}``, ``{"kind": "tabular", "num_numeric": Fn,
        "cardinalities": [...], "features": [column, ...]}``."""
        specs: dict[str, dict[str, Any]] = {}
        for name, kind in self.modality_kinds.items():
            spec: dict[str, Any] = {"kind": kind}
            if name in self.slices:
                spec["slices"] = self._stack_size(name)
            if kind == "image" and self.study_column is not None:
                spec["study"] = True
            if kind == "text":
                spec["vocab_size"] = self.vocab_size
            elif kind == "tabular" and self.tabular is not None:
                spec["num_numeric"] = self.tabular.num_numeric
                spec["cardinalities"] = self.tabular.cardinalities
                spec["features"] = self.tabular.spec.columns
            specs[name] = spec
        return specs

    def _stack_size(self, name: str) -> int:
        """K, the slices per stack of modality ``name``."""
        k = self.slices[name].neighbours
        if k is not None:
            return 2 * k + 1
        records = [r for r in (self._table, *self._test_records, self._predict_records) if r is not None]
        stack = next((s for r in records for s in r.stacks.get(name, []) if s is not None), None)
        if stack is None:
            raise DataError(f"No row lists slices for {name!r}. Fix: fill in data.slices.{name}.column.")
        return len(stack)

    # ----------------------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """What a trained model needs from this data, as plain values (Lightning stores it in checkpoints): the
        class names and training counts, the modalities, the text tokenizer, the tabular statistics, the knowledge
        corpus's digest, the image and text sizes and normalisation, and the class counts per split."""
        tokenizer = tokenizer_state(self.tokenizer) if self.tokenizer is not None else None
        return mark(
            {
                "class_names": list(self.class_names),
                "class_counts": self.class_counts,
                "modalities": dict(self.modality_kinds),
                "tokenizer": tokenizer,
                "tabular": self.tabular.state_dict() if self.tabular is not None else None,
                "knowledge": self.knowledge_state,
                # what serving the model needs to prepare a case as the loaders do (medfusion.deploy)
                "image_size": self.image_size,
                "mean": list(self.mean),
                "std": list(self.std),
                "max_length": self.max_length,
                "split_counts": self.split_counts(),
                "group_column": self.group_column,
            }
        )

    def split_labels(self) -> dict[str, Sequence[int]]:
        """The class index of every sample of each split read (``train``, ``val``, ``test``)."""
        return self._labels if self._table is not None else {}

    def split_counts(self) -> dict[str, list[int]]:
        """Samples per class of each split, for the model card."""
        labels = self.split_labels()
        return {name: [list(values).count(c) for c in range(len(self.class_names))] for name, values in labels.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check that a checkpoint's data state (restored by Lightning with ``ckpt_path``) is the one this data
        gives; the datasets are already built, so a difference is a :class:`ConfigError` naming it."""
        current = self.state_dict()
        if self.tokenizer is not None and state_dict.get("tokenizer") is not None:
            # compare what the tokenizer does, not its serialisation
            current["tokenizer"] = dict(self.tokenizer.get_vocab())
            state_dict = {**state_dict, "tokenizer": dict(tokenizer_from_state(state_dict["tokenizer"]).get_vocab())}
        check_same_state(state_dict, current)

    # ----------------------------------------------------------------------------- datasets
    def _dataset(self, records: Records, labels: Sequence[int], name: str) -> MultimodalDataset:
        train = name == "train"
        make_transform = train_transform if train and self.augment else eval_transform
        tabular = tabular_present = None
        if self.tabular is not None:
            tabular = self.tabular.transform(records.tabular, records.csv_path, records.rows)
            self.data_report[f"unknown_categories/{name}"] = int((tabular.categorical == UNKNOWN).sum())
            if "tabular" in self.allow_missing:
                tabular_present = [not absent for absent in records.tabular_absent()]
        for modality in self.slices:
            count = replicated(records.stacks[modality])
            self.data_report[f"replicated_slices/{name}"] = count
            if count and name == "train":
                rank_zero_warn(
                    f"{count} slice(s) of the {modality!r} stacks of {records.csv_path} lie beyond a volume's edge: "
                    "the nearest slice is repeated in their place (data.slices; counted as replicated_slices/<set>)."
                )
        for modality in self.allow_missing:
            if modality in self.image_names:
                missing = sum(p is None for p in records.images[modality])
            elif modality == "text":
                missing = sum(t is None for t in records.texts)
            else:
                missing = sum(not p for p in tabular_present)
            self.data_report[f"missing_{modality}/{name}"] = missing
        return MultimodalDataset(
            cached=self._cached_images(records, name),
            cached_transform=cached_transform(self.image_size, train and self.augment, self.mean, self.std),
            ids=records.ids,
            labels=labels,
            images={modality: records.images[modality] for modality in self.image_names},
            crops={m: self._crops(records, m) for m in self.image_names if m in self.crops},
            stacks={m: records.stacks[m] for m in self.image_names if m in records.stacks},
            studies=self.image_names if self.study_column is not None else (),
            token_ids=self._tokenize(records, name) if self.uses_text else None,
            tabular=tabular,
            tabular_present=tabular_present,
            transform=make_transform(self.image_size, self.mean, self.std),
            texts=records.texts if self.uses_text else None,
            csv_path=records.csv_path,
            rows=records.rows,
            # predictions keep every requested id: a sample that cannot be read gets an error row, not a substitute
            on_bad_image="mark" if name == "predict" and self.on_bad_image == "skip" else self.on_bad_image,
        )

    def _cached_images(self, records: Records, name: str) -> dict[str, CachedImages]:
        """With ``image_cache``, each image modality's entry for ``records`` (built on rank zero, once per job)."""
        if self.image_cache is None or not self.image_names:
            return {}
        directory, size = self.image_cache, self.image_size

        def build() -> dict[str, str]:
            what = "{} images of the " + name + " set"
            entries = {}
            for m in self.image_names:
                files, crops = self._files(records, m), self._crops(records, m)
                entries[m] = str(image_entry(directory, m, files, size, what.format(m), crops))
            return entries

        return {m: CachedImages.open(Path(folder)) for m, folder in once_per_job(self.trainer, build).items()}

    @staticmethod
    def _files(records: Records, name: str) -> list[str | None]:
        """The files of image modality ``name``, one per sample, or a slice stack's or study's files, flattened."""
        if name not in records.stacks:
            return records.images[name]
        return [f for stack in records.stacks[name] for f in stack or ()]

    def _crops(self, records: Records, name: str) -> Crops | None:
        """How image modality ``name`` of ``records`` is cut (None: it is not a crop)."""
        return Crops(self.crops[name], records.crops[name]) if name in self.crops else None

    def _tokenize(self, records: Records, name: str) -> TokenIds:
        """Token ids per text of ``records`` (None stays None), computed as samples are read; the truncated ones
        (counted when the data was read) are warned and put in ``data_report``."""
        tokens = TokenIds(self.tokenizer, records.texts, self.max_length)
        truncated = self._truncated[name]
        self.data_report[f"truncated_texts/{name}"] = truncated
        if truncated:
            count = sum(t is not None for t in records.texts)
            rank_zero_warn(
                f"{truncated} of {count} texts in {records.csv_path} exceed max_length={self.max_length} and were "
                "truncated"
            )
        return tokens

    def setup(self, stage: str | None = None) -> None:
        if self.image_names and self.verify_images and not self._verified:
            once_per_job(self.trainer, self._verify)
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

    def _verify(self) -> None:
        """Decode-check every image file: whole CSVs, not splits, so that the rows in an error are the file's lines."""
        cache = VerifiedFiles(cache_root(self.cache_dir)) if self.cache else None
        for records in (self._table, *self._test_records[1:], self._predict_records):
            for name, paths in records.images.items() if records is not None else ():
                verify_images(paths, records.csv_path, cache)
                stacks = records.stacks.get(name, [])
                for j in range(max((len(s) for s in stacks if s is not None), default=0)):  # the neighbours too
                    verify_images(
                        [s[j] if s is not None and j < len(s) else None for s in stacks], records.csv_path, cache
                    )

    # ----------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        # epochs whose batches are done: the coming epoch (Lightning resumes from a train-epoch-end checkpoint
        # with current_epoch one behind until its loop starts; a validation-end one restores the loader's state)
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if train and self.trainer is not None else 0
        return make_loader(
            dataset,
            train=train,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate=self.collate,
            balanced_labels=self._labels["train"] if train and self.sampler == "balanced" else None,
            seed=self.seed,
            epoch=epoch,
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
        sets = tuple(self.image_names) if self.study_column is not None else ()
        shape = (3, self.image_size, self.image_size)
        if self.tokenizer is None:
            return Collate(0, image_shape=shape, sets=sets)
        missing = tuple(self.tokenizer("")["input_ids"])
        return Collate(self.tokenizer.pad_token_id, missing_text_ids=missing, image_shape=shape, sets=sets)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """On the CPU the loaders' batches are where they belong: skip Lightning's walk over the nested batch dict
        (~0.4 ms a step, a tenth of a small cached model's)."""
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        """An :class:`EpochSeededLoader`: each epoch's order, augmentation and dropout are reseeded from the run's
        seed and the epoch, and its epoch counter travels in checkpoints, so a resumed run repeats them exactly."""
        return self._loader(self._data("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._data("val"), train=False)

    def train_eval_dataloader(self) -> DataLoader:
        """The training rows in order, in evaluation batches (no shuffling, no balanced sampling): what a model's
        training-set metrics are measured on (learning curves). The training dataset's own transform applies."""
        return self._loader(self._data("train"), train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(self._data(n if n == "test" else f"test_{n}"), False) for n in self.test_set_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._data("predict"), train=False)
