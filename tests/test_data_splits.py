"""Tests of splitting the data and of its classes (medfusion.data): lesion/patient-aware random splits, split
columns, class names, their order and counts.

The HAM10000 tests use the real metadata CSV (../shared/data) with 8x8 placeholder JPEGs; the rest build tiny
CSV/JSON/image layouts in tmp_path.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
from data_helpers import (
    HAM_CLASSES,
    all_ids,
    build,
    data_error,
    ham_datamodule,
    ham_split_of,
    sample_rows,
    write_layout,
)

from medfusion.data.splits import stratified_group_split
from medfusion.data.table import infer_class_names


# ------------------------------------------------------------------------------------- 1. HAM10000
def test_ham_classes_and_counts(ham_dm, ham_layout) -> None:
    assert ham_dm.class_names == HAM_CLASSES
    assert ham_dm.num_classes == 7
    train = set(all_ids(ham_dm, "train"))
    assert sum(ham_dm.class_counts) == len(train) == len(ham_dm.datasets["train"])
    dx = dict(zip(ham_layout.table["image_id"], ham_layout.table["dx"], strict=True))
    expected = Counter(dx[i] for i in train)
    assert ham_dm.class_counts == [expected[name] for name in HAM_CLASSES]
    # Labels in the dataset are the class indices of dx.
    dataset = ham_dm.datasets["train"]
    assert all(HAM_CLASSES[label] == dx[i] for i, label in zip(dataset.ids, dataset.labels, strict=True))


def test_ham_split_keeps_lesions_whole_and_follows_ratios(ham_dm, ham_layout) -> None:
    table = ham_layout.table
    split_of = ham_split_of(ham_dm)
    assert len(split_of) == len(table)  # nothing dropped, nothing duplicated
    lesion_splits = table.assign(split=table["image_id"].map(split_of)).groupby("lesion_id")["split"].nunique()
    assert lesion_splits.max() == 1, "a lesion_id appears in two splits"
    sizes = Counter(split_of.values())
    for split, ratio in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(sizes[split] / len(table) - ratio) < 0.05, sizes
    dx = dict(zip(table["image_id"], table["dx"], strict=True))
    for split in ("train", "val", "test"):
        assert {dx[i] for i, s in split_of.items() if s == split} == set(HAM_CLASSES), split


def test_ham_split_is_deterministic_per_seed(ham_dm, ham_layout) -> None:
    def split_with(seed: int) -> dict[str, str]:
        dm = ham_datamodule(ham_layout.csv_path, ham_layout.image_dir, seed=seed, verify_images=False)
        return {i: s for s in ("train", "val", "test") for i in dm._records[s].ids}

    assert split_with(7) == ham_split_of(ham_dm)
    assert split_with(8) != ham_split_of(ham_dm)


def test_ham_full_metadata_text_only(ham_metadata_csv) -> None:
    """All 10,015 real rows (text only, no images needed): lesions never cross splits, every class everywhere."""
    dm = ham_datamodule(ham_metadata_csv, modalities=["text"], seed=0)
    table = pd.read_csv(ham_metadata_csv, dtype=str)
    split_of = {i: s for s in ("train", "val", "test") for i in dm._records[s].ids}
    assert len(split_of) == len(table) == 10015
    assert dm.class_names == HAM_CLASSES
    assert sum(dm.class_counts) == len(dm._records["train"].ids)
    assert table.assign(split=table["image_id"].map(split_of)).groupby("lesion_id")["split"].nunique().max() == 1
    sizes = Counter(split_of.values())
    assert abs(sizes["train"] / 10015 - 0.7) < 0.02 and abs(sizes["test"] / 10015 - 0.15) < 0.02
    for split in ("val", "test"):
        assert set(dm._records[split].labels) == set(HAM_CLASSES)
    texts = dict(zip(dm._records["train"].ids, dm._records["train"].texts, strict=True))
    no_age = [i for i in table.loc[table["age"].isna(), "image_id"] if i in texts]
    assert no_age and all(texts[i].startswith("unknown-year-old ") for i in no_age)
    assert dm.vocab_size == len(dm.tokenizer)
    # The split function alone: the same seed gives the same split, another seed another one.
    args = (table["dx"].tolist(), table["lesion_id"].tolist(), 0.15, 0.15)
    assert stratified_group_split(*args, seed=3) == stratified_group_split(*args, seed=3)
    assert stratified_group_split(*args, seed=3) != stratified_group_split(*args, seed=4)


# --------------------------------------------------------------------- 2. split columns and groups
def test_split_column_with_synonyms_is_honoured(tmp_path: Path) -> None:
    folds = [
        ("train", "train"),
        ("Training", "train"),
        ("valid", "val"),
        ("test", "test"),
        ("train", "train"),
        ("VAL", "val"),
        ("testing", "test"),
        ("dev", "val"),
        ("train", "train"),
        (" validation ", "val"),
        ("train", "train"),
        ("validate", "val"),  # MIMIC-CXR's split file
        ("Validate", "val"),
        ("DEV", "val"),
        ("train", "train"),
    ]
    rows = sample_rows(len(folds))
    expected = {}
    for row, (value, split) in zip(rows, folds, strict=True):
        row["fold"] = value
        expected[row["image_id"]] = split
    layout = write_layout(tmp_path, rows)
    dm = build(layout, split_column="fold")
    dm.setup()
    for split in ("train", "val", "test"):
        assert set(all_ids(dm, split)) == {i for i, s in expected.items() if s == split}, split


def test_unknown_split_value_is_an_error(tmp_path: Path) -> None:
    rows = sample_rows(8)
    for i, row in enumerate(rows):
        row["fold"] = ["train", "val"][i % 2]
    rows[5]["fold"] = "holdout"
    layout = write_layout(tmp_path, rows)
    message = data_error(lambda: build(layout, split_column="fold"), "samples.csv", "line 7", "'holdout'")
    for accepted in ("train, val or test", "validate", "valid", "validation", "dev"):  # the fix lists them
        assert accepted in message, accepted


def test_group_spanning_two_splits_is_an_error(tmp_path: Path) -> None:
    rows = sample_rows(8)
    for i, row in enumerate(rows):
        row["fold"] = ["train", "val", "test", "train"][i % 4]
        row["patient"] = f"p{i}"
    rows[1]["patient"] = rows[0]["patient"] = "p_leak"  # train (line 2) and val (line 3)
    layout = write_layout(tmp_path, rows)
    message = data_error(
        lambda: build(layout, split_column="fold", group_column="patient"),
        "samples.csv",
        "'p_leak'",
        "line 2",
        "line 3",
    )
    assert "'p1'" not in message and "line 4" not in message
    # Without the leak the same layout is fine.
    rows[1]["patient"] = "p1"
    fixed = write_layout(tmp_path / "fixed", rows)
    build(fixed, split_column="fold", group_column="patient")


def test_split_column_without_test_rows_and_zero_val_ratio(tmp_path: Path) -> None:
    # A split column with no "test" rows: test and predict (which defaults to the test split) are empty, not a crash.
    rows = sample_rows(8)
    for i, row in enumerate(rows):
        row["fold"] = "val" if i < 2 else "train"
    layout = write_layout(tmp_path, rows)
    dm = build(layout, split_column="fold")
    dm.setup()
    assert len(dm.datasets["test"]) == 0 and len(dm.datasets["predict"]) == 0
    assert list(dm.test_dataloader()) == []
    # val_ratio=0: no validation rows, fit still sets up.
    dm = build(write_layout(tmp_path / "noval"), val_ratio=0.0)
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 0 and len(dm.datasets["train"]) > 0


# -------------------------------------------------------------------------------------- 3. classes
def test_numeric_labels_are_ordered_numerically(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(30, labels=("10", "2", "1")))
    dm = build(layout)
    assert dm.class_names == ["1", "2", "10"]
    dm.setup("fit")
    dataset = dm.datasets["train"]
    labels = {r["image_id"]: r["label"] for r in layout.rows}
    assert all(dm.class_names[y] == labels[i] for i, y in zip(dataset.ids, dataset.labels, strict=True))
    # Zero-padded spellings of the same number get a fixed order too (not the set's iteration order).
    assert infer_class_names(["2", "02", "10", "-1"]) == ["-1", "02", "2", "10"]


def test_class_names_fix_the_order(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(24, labels=("benign", "malignant")))
    dm = build(layout, class_names=["malignant", "benign"])
    assert dm.class_names == ["malignant", "benign"] and dm.num_classes == 2
    dm.setup("fit")
    dataset = dm.datasets["train"]
    labels = {r["image_id"]: r["label"] for r in layout.rows}
    assert all(["malignant", "benign"][y] == labels[i] for i, y in zip(dataset.ids, dataset.labels, strict=True))
    counts = Counter(labels[i] for i in dataset.ids)
    assert dm.class_counts == [counts["malignant"], counts["benign"]]


def test_class_without_training_rows_is_an_error(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, class_names=["benign", "malignant", "unseen"]), "'unseen'", "samples.csv")
