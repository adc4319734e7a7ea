"""Reading the CSVs of one data configuration: records of every modality, labels merged, the training CSV split."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from medfusion.data.crops import CropSpec
from medfusion.data.errors import DataError
from medfusion.data.images import ImageIndex
from medfusion.data.knowledge import KnowledgeSpec, Retriever
from medfusion.data.slices import SliceSpec
from medfusion.data.splits import assign_splits, rare_class_warnings, training_subset
from medfusion.data.table import Records, infer_class_names, label_indices, read_records, resolve_equivalent_labels
from medfusion.data.tabular import TabularPreprocessor, TabularSpec
from medfusion.data.test_sets import TestSet
from medfusion.data.texts import read_text_json
from medfusion.data.token_ids import TokenIds
from medfusion.data.tokenizer import build_tokenizer
from medfusion.runs.checkpoints import tokenizer_from_state

SPLITS = ("train", "val", "test")


@dataclass
class CsvReader:
    """How every CSV of a configuration is read: its columns, modalities and cell conventions.

    ``image_columns`` maps each image modality name to its column of paths (None: found by id); ``crops`` the
    modalities cut from one of them (:mod:`medfusion.data.crops`).
    """

    id_column: str
    label_column: str
    image_columns: dict[str, str | None]
    uses_text: bool
    text_column: str | None = None
    text_template: str | None = None
    tabular_spec: TabularSpec | None = None
    allow_missing: list[str] = field(default_factory=list)
    sep: str = ","
    na_values: list[str] = field(default_factory=list)
    merge_equivalent_labels: bool = False
    crops: dict[str, CropSpec] = field(default_factory=dict)
    slices: dict[str, SliceSpec] = field(default_factory=dict)
    study_column: str | None = None
    study_max_images: int | None = None
    knowledge: KnowledgeSpec | None = None

    def read(
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
        spec = self.tabular_spec
        return read_records(
            csv_path,
            id_column=self.id_column,
            label_column=self.label_column,
            labels_required=labels_required,
            image_index=ImageIndex(image_dir) if self.image_columns else None,
            image_columns=self.image_columns,
            text_json=texts_from_json,
            json_path=text_json if self.uses_text else None,
            text_column=self.text_column if self.uses_text else None,
            text_template=self.text_template if self.uses_text else None,
            tabular_columns=spec.columns if spec else (),
            categorical_columns=spec.categorical if spec else (),
            split_column=split_column,
            group_column=group_column,
            allow_missing=self.allow_missing,
            sep=self.sep,
            na_values=self.na_values,
            crops=self.crops,
            slices=self.slices,
            study_column=self.study_column,
            study_max_images=self.study_max_images,
        )

    def merge_labels(self, records: Records, class_names: Sequence[str]) -> Records:
        """``records`` with labels equivalent to a class or to each other merged (``merge_equivalent_labels``),
        else a :class:`DataError` naming them."""
        records, merged = resolve_equivalent_labels(records, class_names, self.merge_equivalent_labels)
        if merged:
            rank_zero_warn(f"data.merge_equivalent_labels: {merged}")
        return records


@dataclass(frozen=True)
class SplitOptions:
    """How the training CSV is split: by its ``split_column``, else at random by group (``group_column``, else
    each row) with ``val_ratio``/``test_ratio`` and ``seed``; ``train_fraction`` of the training rows are used
    (:func:`~medfusion.data.splits.training_subset`)."""

    split_column: str | None = None
    group_column: str | None = None
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    seed: int = 42
    train_fraction: float = 1.0


@dataclass
class TrainingData:
    """The training CSV read and split: the whole table, per split its records and class indices, the classes and
    the training rows per class."""

    table: Records
    records: dict[str, Records]
    labels: dict[str, list[int]]
    class_names: list[str]
    class_counts: list[int]


def read_training(
    reader: CsvReader,
    csv_path: str,
    image_dir: str | None,
    text_json: str | None,
    split: SplitOptions,
    class_names: Sequence[str],
    classes_given: bool,
) -> TrainingData:
    """Read the main CSV into train/val/test splits (class names inferred unless given). A class without training
    rows is an error unless the classes come from a checkpoint (``classes_given``); rare classes are warned."""
    read = reader.read(csv_path, image_dir, text_json, split_column=split.split_column, group_column=split.group_column)
    records = reader.merge_labels(read, class_names)
    names = list(class_names) or infer_class_names(records.labels)
    labels = label_indices(records, names)
    splits = assign_splits(
        records.splits,
        records.labels,
        records.groups if records.groups is not None else records.ids,
        csv_path,
        split.val_ratio,
        split.test_ratio,
        split.seed,
        group_column_given=records.groups is not None,
    )
    groups = records.groups if records.groups is not None else records.ids
    splits = training_subset(splits, records.labels, groups, split.train_fraction, split.seed)
    unused = splits.count("unused")
    if unused:
        rank_zero_warn(f"data.train_fraction={split.train_fraction:g}: {splits.count('train')} of "
                       f"{splits.count('train') + unused} training rows of {csv_path} are used; validation and test "
                       "are unchanged.")  # fmt: skip
    by_split = {s: records.subset([r for r, x in enumerate(splits) if x == s]) for s in SPLITS}
    split_labels = {s: [labels[r] for r, x in enumerate(splits) if x == s] for s in SPLITS}
    counts = Counter(split_labels["train"])
    class_counts = [counts.get(i, 0) for i in range(len(names))]
    empty = [names[i] for i, c in enumerate(class_counts) if c == 0]
    if empty and not classes_given:
        raise DataError(f"Classes {empty} have no training rows in {csv_path}. Fix: add rows or drop the classes.")
    needed = 1 + (split.val_ratio > 0) + (split.test_ratio > 0) if records.splits is None else 0
    for warning in rare_class_warnings(split_labels, names, csv_path, needed):
        rank_zero_warn(warning)
    return TrainingData(records, by_split, split_labels, names, class_counts)


@dataclass
class ReadData:
    """Everything a configuration's CSVs give before any dataset is built: the training table and its splits (each
    split's records and class indices), the classes and training counts, the tabular preprocessor, the external
    test sets as ``(name, records, class indices)``, the prediction records, the text tokenizer, the texts over
    ``max_length`` per set name (``train``, ``val``, ``test``, ``test_<name>``, ``predict``), and (filled by the
    set-up cache) the warnings reading raised."""

    table: Records | None
    records: dict[str, Records]
    labels: dict[str, list[int]]
    class_names: list[str]
    class_counts: list[int] | None
    tabular: TabularPreprocessor | None
    tests: list[tuple[str, Records, list[int]]]
    predict: Records | None
    tokenizer: PreTrainedTokenizerBase | None
    truncated: dict[str, int] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (category name, message)


def with_passages(records: Records | None, retriever: Retriever) -> Records | None:
    """``records`` with each text followed by its retrieved knowledge passages (their ids in ``passages``)."""
    if records is None or records.texts is None:
        return records
    found = retriever.retrieve(records.texts)
    return dataclasses.replace(records, texts=found.texts, passages=found.passages)


def read_all(
    reader: CsvReader,
    csv_path: str | None,
    image_dir: str | None,
    text_json: str | None,
    split: SplitOptions,
    class_names: Sequence[str],
    *,
    test_sets: dict[str, TestSet],
    predict_csv: str | None,
    trained: dict[str, Any] | None,
    tokenizer: str,
    vocab_size: int,
    max_length: int,
) -> ReadData:
    """Read every CSV of a configuration: the training CSV split (unless None), the external test sets, the
    prediction CSV; fit the tabular preprocessor on the training rows and build (or train) the tokenizer, unless
    ``trained`` (a checkpoint's data state) holds them; count the texts over ``max_length``."""
    table, records = None, dict.fromkeys(SPLITS, Records.empty(csv_path))
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    names, counts = list(class_names), trained["class_counts"] if trained else None
    tabular = TabularPreprocessor.from_state(trained["tabular"]) if trained and trained.get("tabular") else None
    if csv_path is not None:
        training = read_training(reader, csv_path, image_dir, text_json, split, names, trained is not None)
        table, records, labels = training.table, training.records, training.labels
        names, counts = training.class_names, training.class_counts
        if reader.tabular_spec is not None and tabular is None:  # fitted on the training rows only
            tabular = TabularPreprocessor.fit(reader.tabular_spec, table.tabular, csv_path, records["train"].rows)
    tests = []
    for name, test_set in test_sets.items():
        ext = reader.read(test_set.csv_path, test_set.image_dir or image_dir, test_set.text_json or text_json)
        ext = reader.merge_labels(ext, names)
        tests.append((name, ext, label_indices(ext, names)))
    predict = reader.read(predict_csv, image_dir, text_json, labels_required=False) if predict_csv else None
    if reader.knowledge is not None and reader.uses_text:  # before the tokenizer: it learns the passages too
        retriever = Retriever(reader.knowledge, names)
        if retriever.excluded:
            rank_zero_warn(
                f"data.knowledge: {len(retriever.excluded)} passage(s) of {reader.knowledge.corpus} name a class and "
                f"are never appended (they would give the label away): ids {retriever.excluded[:10]}"
            )
        table = with_passages(table, retriever)
        records = {split: with_passages(recs, retriever) for split, recs in records.items()}
        tests = [(name, with_passages(recs, retriever), labels_) for name, recs, labels_ in tests]
        predict = with_passages(predict, retriever)
    built = None
    if reader.uses_text and trained and trained.get("tokenizer"):
        built = tokenizer_from_state(trained["tokenizer"])  # exactly the model's, retrained on nothing
    elif reader.uses_text:
        built = build_tokenizer(tokenizer, [t for t in (records["train"].texts or []) if t is not None], vocab_size)
    truncated = {}
    if built is not None:
        sets = {**(records if table is not None else {}), **{f"test_{n}": r for n, r, _ in tests}}
        sets["predict"] = predict or records["test"]  # without a prediction CSV: the test split, counted once
        for name, recs in sets.items():
            if recs is records["test"] and "test" in truncated:
                truncated[name] = truncated["test"]
                continue
            tokens = TokenIds(built, recs.texts or [], max_length)
            truncated[name] = tokens.count_truncated(f"counting texts over max_length in the {name} set")
    return ReadData(table, records, labels, names, counts, tabular, tests, predict, built, truncated)
