"""Reading the CSVs of one data configuration: records of every modality, labels merged, the training CSV split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from lightning.pytorch.utilities import rank_zero_warn

from medfusion.data.errors import DataError
from medfusion.data.images import ImageIndex
from medfusion.data.splits import assign_splits, rare_class_warnings
from medfusion.data.table import Records, infer_class_names, label_indices, read_records, resolve_equivalent_labels
from medfusion.data.tabular import TabularSpec
from medfusion.data.texts import read_text_json

SPLITS = ("train", "val", "test")


@dataclass
class CsvReader:
    """How every CSV of a configuration is read: its columns, modalities and cell conventions.

    ``image_columns`` maps each image modality name to its column of paths (None: found by id).
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
        )

    def merge_labels(self, records: Records, class_names: Sequence[str]) -> Records:
        """``records`` with labels equivalent to a class or to each other merged (``merge_equivalent_labels``),
        else a :class:`DataError` naming them."""
        records, merged = resolve_equivalent_labels(records, class_names, self.merge_equivalent_labels)
        if merged:
            rank_zero_warn(f"data.merge_equivalent_labels: {merged}")
        return records


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
    *,
    split_column: str | None,
    group_column: str | None,
    class_names: Sequence[str],
    val_ratio: float,
    test_ratio: float,
    seed: int,
    classes_given: bool,
) -> TrainingData:
    """Read the main CSV into train/val/test splits (class names inferred unless given). A class without training
    rows is an error unless the classes come from a checkpoint (``classes_given``); rare classes are warned."""
    records = reader.merge_labels(
        reader.read(csv_path, image_dir, text_json, split_column=split_column, group_column=group_column), class_names
    )
    names = list(class_names) or infer_class_names(records.labels)
    labels = label_indices(records, names)
    splits = assign_splits(
        records.splits,
        records.labels,
        records.groups if records.groups is not None else records.ids,
        csv_path,
        val_ratio,
        test_ratio,
        seed,
        group_column_given=records.groups is not None,
    )
    by_split = {s: records.subset([r for r, x in enumerate(splits) if x == s]) for s in SPLITS}
    split_labels = {s: [labels[r] for r, x in enumerate(splits) if x == s] for s in SPLITS}
    counts = Counter(split_labels["train"])
    class_counts = [counts.get(i, 0) for i in range(len(names))]
    empty = [names[i] for i, c in enumerate(class_counts) if c == 0]
    if empty and not classes_given:
        raise DataError(f"Classes {empty} have no training rows in {csv_path}. Fix: add rows or drop the classes.")
    needed = 1 + (val_ratio > 0) + (test_ratio > 0) if records.splits is None else 0
    for warning in rare_class_warnings(split_labels, names, csv_path, needed):
        rank_zero_warn(warning)
    return TrainingData(records, by_split, split_labels, names, class_counts)
