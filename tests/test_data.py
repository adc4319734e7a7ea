"""Tests of the data layer (medfusion.data): reading, validating, splitting, tokenizing and batching.

The HAM10000 tests use the real metadata CSV (../shared/data) with 8x8 placeholder JPEGs; the rest
build tiny CSV/JSON/image layouts in tmp_path. Every error path must raise one DataError naming the
file, the CSV line (header = line 1), the offending id and the fix.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medfusion.data import Collate, DataError, MultimodalDataModule
from medfusion.data import TestSet as ExternalTestSet  # aliased: pytest would try to collect Test*
from medfusion.data.images import load_rgb, to_8bit
from medfusion.data.splits import stratified_group_split
from medfusion.data.table import infer_class_names
from medfusion.data.texts import render_template

HAM_TEMPLATE = "{age}-year-old {sex}, lesion on the {localization}."
HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
BATCH_KEYS = {"image", "input_ids", "attention_mask", "label", "id", "image_present", "text_present"}
SITES = ["back", "upper extremity", "face"]


# --------------------------------------------------------------------------------------------- helpers
def write_image(path: Path, mode: str = "RGB", value: int | tuple[int, ...] = 128, size: int = 8) -> Path:
    """A tiny flat image; ``value`` is per mode (an int for "L"/"P", a tuple for "RGB"/"RGBA")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB" and isinstance(value, int):
        value = (value, value // 2, 255 - value)
    Image.new(mode, (size, size), value).save(path)
    return path


def sample_rows(n: int = 24, labels: tuple[str, ...] = ("benign", "malignant")) -> list[dict[str, str]]:
    return [
        {"image_id": f"s{i:03d}", "label": labels[i % len(labels)], "site": SITES[i % 3], "age": str(30 + i)}
        for i in range(n)
    ]


def sample_text(row: dict[str, str], i: int) -> str:
    # Lengths vary (0-3 extra words) so that batches need padding.
    return f"{row['site']} lesion with a {row['label']} pattern" + " very" * (i % 4)


@dataclass
class Layout:
    root: Path
    csv_path: Path
    image_dir: Path
    json_path: Path
    rows: list[dict[str, str]]


def write_layout(
    root: Path,
    rows: list[dict[str, str]] | None = None,
    texts: dict[str, str] | None = None,
    image_ext: str = ".png",
    name: str = "samples",
) -> Layout:
    """``<name>.csv`` (columns from the row dicts), ``images/<id><ext>`` per row and ``<name>.json`` texts."""
    rows = sample_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    csv_path = root / f"{name}.csv"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    image_dir = root / "images"
    for i, row in enumerate(rows):
        write_image(image_dir / f"{row['image_id']}{image_ext}", value=(i * 37) % 256)
    json_path = root / f"{name}.json"
    texts = {row["image_id"]: sample_text(row, i) for i, row in enumerate(rows)} if texts is None else texts
    json_path.write_text(json.dumps(texts), encoding="utf-8")
    return Layout(root, csv_path, image_dir, json_path, rows)


def build(layout: Layout, **kwargs) -> MultimodalDataModule:
    """A small, deterministic module over ``layout``; ``kwargs`` override (``text_json=None`` drops the JSON)."""
    options = {
        "csv_path": str(layout.csv_path),
        "image_dir": str(layout.image_dir),
        "text_json": str(layout.json_path),
        "id_column": "image_id",
        "label_column": "label",
        "image_size": 16,
        "batch_size": 4,
        "augment": False,
        "seed": 0,
    }
    options.update(kwargs)
    return MultimodalDataModule(**options)


def data_error(make: Callable[[], object], *needles: str) -> str:
    """Run ``make``, expect a DataError whose message has every needle and a fix; return the message."""
    with pytest.raises(DataError) as info:
        make()
    message = str(info.value)
    for needle in (*needles, "Fix"):
        assert needle in message, f"{needle!r} not in the message:\n{message}"
    return message


def all_ids(dm: MultimodalDataModule, split: str) -> list[str]:
    return list(dm.datasets[split].ids)


def decoded_texts(dm: MultimodalDataModule) -> dict[str, str]:
    """id -> its tokenized text decoded back (lower-cased, WordPiece-spaced) for every split."""
    out = {}
    for name in ("train", "val", "test"):
        dataset = dm.datasets[name]
        for sample_id, ids in zip(dataset.ids, dataset.token_ids, strict=True):
            out[sample_id] = dm.tokenizer.decode(ids, skip_special_tokens=True)
    return out


def check_batch(batch: dict, keys: set[str], image_size: int, batch_size: int) -> None:
    assert set(batch) == keys
    size = len(batch["id"])
    assert 0 < size <= batch_size
    assert isinstance(batch["id"], list) and all(isinstance(i, str) for i in batch["id"])
    assert batch["label"].dtype == torch.long and batch["label"].shape == (size,)
    if "image" in keys:
        assert batch["image"].dtype == torch.float32
        assert batch["image"].shape == (size, 3, image_size, image_size)
        assert batch["image_present"].dtype == torch.bool and batch["image_present"].shape == (size,)
        assert batch["image_present"].all()
    if "input_ids" in keys:
        assert batch["input_ids"].dtype == torch.long and batch["input_ids"].ndim == 2
        assert batch["input_ids"].shape[0] == size
        assert batch["attention_mask"].dtype == torch.long
        assert batch["attention_mask"].shape == batch["input_ids"].shape
        assert batch["text_present"].dtype == torch.bool and batch["text_present"].all()


# ------------------------------------------------------------------------------------- 1. HAM10000
def ham_datamodule(csv_path, image_dir=None, **kwargs) -> MultimodalDataModule:
    """HAM10000 as users configure it: extension-less image_id, dx labels, lesion-aware split, templated text."""
    options = {
        "id_column": "image_id",
        "label_column": "dx",
        "group_column": "lesion_id",
        "text_template": HAM_TEMPLATE,
    }
    return MultimodalDataModule(
        csv_path=str(csv_path), image_dir=None if image_dir is None else str(image_dir), **options | kwargs
    )


@pytest.fixture(scope="module")
def ham_dm(ham_layout) -> MultimodalDataModule:
    dm = ham_datamodule(
        ham_layout.csv_path, ham_layout.image_dir, image_size=32, batch_size=8, seed=7, verify_images=True
    )
    dm.setup()
    return dm


def ham_split_of(dm: MultimodalDataModule) -> dict[str, str]:
    return {i: split for split in ("train", "val", "test") for i in all_ids(dm, split)}


def test_ham_layout_is_realistic(ham_layout) -> None:
    # The fixture must exercise what the tests claim: shared lesions, both parts, missing ages, unknown sex.
    table = ham_layout.table
    assert 300 < len(table) < 1000
    assert table.groupby("lesion_id").size().max() > 1
    no_age, unknown_sex = table["age"].isna(), table["sex"] == "unknown"
    assert (no_age & ~unknown_sex).any() and (~no_age & unknown_sex).any()
    assert {p.name for p in ham_layout.image_dir.iterdir()} == {"part_1", "part_2"}
    assert all(any((ham_layout.image_dir / p).iterdir()) for p in ("part_1", "part_2"))


def test_ham_ids_without_extension_resolve_to_jpg_in_both_parts(ham_dm, ham_layout) -> None:
    paths = {}
    for split in ("train", "val", "test"):
        records = ham_dm._records[split]
        paths.update(zip(records.ids, records.image_paths, strict=True))
    assert set(paths) == set(ham_layout.table["image_id"])
    for image_id, path in paths.items():
        assert path.suffix == ".jpg" and path.stem == image_id and path.is_file()
    assert {path.parent.name for path in paths.values()} == {"part_1", "part_2"}


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


def test_ham_template_missing_age_reads_unknown_and_unknown_sex_passes(ham_dm, ham_layout) -> None:
    table = ham_layout.table
    texts = render_template(HAM_TEMPLATE, table, ham_layout.csv_path)
    for text, (_, row) in zip(texts, table.iterrows(), strict=True):
        age = "unknown" if math.isnan(row["age"]) else str(int(row["age"]))  # "80", never "80.0" or "nan"
        assert text == f"{age}-year-old {row['sex']}, lesion on the {row['localization']}."
    # The same end to end: the tokenized texts of the module decode back to them.
    decoded = decoded_texts(ham_dm)
    no_age = table.loc[table["age"].isna() & (table["sex"] != "unknown")].iloc[0]
    expected = f"unknown-year-old {no_age['sex']}, lesion on the {no_age['localization']}."
    assert decoded[no_age["image_id"]].replace(" ", "") == expected.replace(" ", "")
    unknown_sex = table.loc[(table["sex"] == "unknown") & table["age"].notna()].iloc[0]
    expected = f"{int(unknown_sex['age'])}-year-old unknown, lesion on the {unknown_sex['localization']}."
    assert decoded[unknown_sex["image_id"]].replace(" ", "") == expected.replace(" ", "")


def test_ham_batches_have_the_documented_contract(ham_dm) -> None:
    loaders = {
        "train": ham_dm.train_dataloader(),
        "val": ham_dm.val_dataloader(),
        "test": ham_dm.test_dataloader(),
        "predict": ham_dm.predict_dataloader(),
    }
    for name, loader in loaders.items():
        batch = next(iter(loader))
        check_batch(batch, BATCH_KEYS, image_size=32, batch_size=8)
        if name == "predict":
            assert (batch["label"] == -1).all()
        else:
            assert ((batch["label"] >= 0) & (batch["label"] < 7)).all()
        mask = batch["attention_mask"].bool()
        assert (batch["input_ids"][~mask] == ham_dm.tokenizer.pad_token_id).all()


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


# ------------------------------------------------------------------------ 2. text sources and options
def test_text_from_json(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    dm = build(layout)
    dm.setup()
    decoded = decoded_texts(dm)
    texts = json.loads(layout.json_path.read_text())
    train_ids = all_ids(dm, "train")
    assert all(decoded[i] == texts[i].lower() for i in train_ids)
    check_batch(next(iter(dm.train_dataloader())), BATCH_KEYS, image_size=16, batch_size=4)


def test_text_from_csv_column(tmp_path: Path) -> None:
    rows = sample_rows()
    for i, row in enumerate(rows):
        row["report"] = f"Report: {sample_text(row, i)}."
    layout = write_layout(tmp_path, rows)
    dm = build(layout, text_json=None, text_column="report")
    dm.setup()
    decoded = decoded_texts(dm)
    for row in rows:
        assert decoded[row["image_id"]].replace(" ", "") == row["report"].lower().replace(" ", "")


def test_text_from_template(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    dm = build(layout, text_json=None, text_template="{age}-year-old, lesion on the {site}.")
    dm.setup()
    decoded = decoded_texts(dm)
    train = set(all_ids(dm, "train"))  # other splits may hold characters the tokenizer never saw
    for row in (r for r in layout.rows if r["image_id"] in train):
        expected = f"{row['age']}-year-old, lesion on the {row['site']}."
        assert decoded[row["image_id"]].replace(" ", "") == expected.replace(" ", "")
        # ages are whole numbers in the CSV: they must not render as "30.0"
        assert ".0-" not in decoded[row["image_id"]]


def test_several_text_sources_is_an_error(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, text_template="{site}"), "several text sources", "text_json")


def test_image_only_and_text_only_batches(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    image_only = build(layout, modalities=["image"], text_json=None)
    image_only.setup()
    assert image_only.tokenizer is None and image_only.vocab_size is None
    check_batch(next(iter(image_only.train_dataloader())), {"image", "image_present", "label", "id"}, 16, 4)

    # Text only needs no image_dir at all (and ignores a broken one).
    text_only = build(layout, modalities=["text"], image_dir=None)
    text_only.setup()
    keys = {"input_ids", "attention_mask", "text_present", "label", "id"}
    for loader in (text_only.train_dataloader(), text_only.val_dataloader(), text_only.test_dataloader()):
        check_batch(next(iter(loader)), keys, 16, 4)


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


def test_grayscale_rgba_and_palette_images_become_three_channels(tmp_path: Path) -> None:
    rows = sample_rows(12)
    layout = write_layout(tmp_path, rows)
    modes = {"s000": ("L", 200), "s001": ("RGBA", (10, 20, 30, 0)), "s002": ("P", 3), "s003": ("L", 50)}
    for image_id, (mode, value) in modes.items():
        (layout.image_dir / f"{image_id}.png").unlink()
        write_image(layout.image_dir / f"{image_id}.png", mode=mode, value=value)
    split = {r["image_id"]: "train" for r in rows} | {"s010": "val", "s011": "val"}
    for row in rows:
        row["fold"] = split[row["image_id"]]
    write_layout(tmp_path / "csv", rows)  # only for its CSV
    dm = build(
        layout,
        csv_path=str(tmp_path / "csv" / "samples.csv"),
        split_column="fold",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    dm.setup("fit")
    dataset = dm.datasets["train"]
    for image_id in modes:
        image = dataset[dataset.ids.index(image_id)]["image"]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    gray = dataset[dataset.ids.index("s000")]["image"]
    assert torch.allclose(gray, torch.full_like(gray, 200 / 255))  # L -> equal channels, values kept
    rgba = dataset[dataset.ids.index("s001")]["image"]
    assert torch.allclose(rgba[:, 0, 0], torch.tensor([10, 20, 30]) / 255)  # alpha dropped, colour kept


def _tiff_12bit(path: Path, values: np.ndarray) -> Path:
    """An uncompressed 12-bit grayscale TIFF (PIL cannot write one): two samples in three bytes, MSB first."""
    h, w = values.shape
    assert w % 2 == 0
    pairs = values.reshape(-1, 2).tolist()
    data = b"".join(bytes([a >> 4, (a & 15) << 4 | b >> 8, b & 255]) for a, b in pairs)
    # ImageWidth, ImageLength, BitsPerSample, Compression, Photometric (black is zero), StripOffsets,
    # SamplesPerPixel, RowsPerStrip, StripByteCounts; the data follows the one IFD.
    tags = [(256, w), (257, h), (258, 12), (259, 1), (262, 1), (273, 8 + 2 + 9 * 12 + 4), (277, 1), (278, h)]
    tags.append((279, len(data)))
    ifd = len(tags).to_bytes(2, "little") + b"".join(
        t.to_bytes(2, "little") + (4).to_bytes(2, "little") + (1).to_bytes(4, "little") + v.to_bytes(4, "little")
        for t, v in tags
    )
    path.write_bytes(b"II*\x00" + (8).to_bytes(4, "little") + ifd + bytes(4) + data)
    return path


def _gradient_of(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    rgb = np.asarray(image).astype(int)
    assert (rgb == rgb[..., :1]).all()  # grey: equal channels
    return rgb[0, :, 0]


def _assert_full_gradient(row: np.ndarray) -> None:
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 200, row  # monotonic, not saturated
    assert row[0] == 0 and row[-1] == 255 and abs(int(row[len(row) // 2]) - 128) <= 2, row


def test_16bit_and_float_grayscale_images_are_rescaled_not_clipped(tmp_path: Path) -> None:
    # X-ray/MRI exports: PIL's convert("RGB") clips I;16 at 255, so a 0..65535 gradient came out white.
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    Image.fromarray(gradient).save(tmp_path / "xray.png")
    with Image.open(tmp_path / "xray.png") as image:
        assert image.mode == "I;16"
    _assert_full_gradient(_gradient_of(tmp_path / "xray.png"))
    Image.fromarray(gradient).save(tmp_path / "xray.tif")
    _assert_full_gradient(_gradient_of(tmp_path / "xray.tif"))
    big_endian = Image.frombytes("I;16B", (256, 4), gradient.astype(">u2").tobytes())
    _assert_full_gradient(np.asarray(to_8bit(big_endian))[0])
    # A 12-bit TIFF (values 0..4095) is scaled by its BitsPerSample, not by 65535 (which would leave it black).
    twelve = np.tile(np.linspace(0, 4095, 256).round().astype(np.uint16), (2, 1))
    _assert_full_gradient(_gradient_of(_tiff_12bit(tmp_path / "ct.tif", twelve)))
    # One scale per bit depth, not per image: a dark 16-bit image stays dark.
    Image.fromarray(gradient // 4).save(tmp_path / "dark.png")
    assert _gradient_of(tmp_path / "dark.png").max() == 64
    # Float images: 0..1 is scaled by 255; any other range (and 32-bit integers) over its own min..max.
    Image.fromarray(gradient.astype(np.float32) / 65535).save(tmp_path / "unit.tif")
    _assert_full_gradient(_gradient_of(tmp_path / "unit.tif"))
    Image.fromarray(gradient.astype(np.float32) * 3 - 1000).save(tmp_path / "hounsfield.tif")
    _assert_full_gradient(_gradient_of(tmp_path / "hounsfield.tif"))
    _assert_full_gradient(np.asarray(to_8bit(Image.fromarray(gradient.astype(np.int32) - 1024)))[0])


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


def test_external_test_set_gives_a_second_test_loader(tmp_path: Path) -> None:
    main = write_layout(tmp_path / "main", [r | {"patient": f"p{i // 2}"} for i, r in enumerate(sample_rows())])
    # The external set has its own images and texts, and no patient column (groups only matter for splitting).
    ext_rows = [{"image_id": f"x{i}", "label": ["benign", "malignant"][i % 2], "site": "back"} for i in range(5)]
    ext = write_layout(tmp_path / "ext", ext_rows, name="external")
    spec = ExternalTestSet(csv_path=str(ext.csv_path), image_dir=str(ext.image_dir), text_json=str(ext.json_path))
    dm = build(main, group_column="patient", test_sets={"ext": spec})
    assert dm.test_set_names == ["test", "ext"]
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    ext_ids = [i for batch in loaders[1] for i in batch["id"]]
    assert ext_ids == [r["image_id"] for r in ext_rows]
    ext_labels = torch.cat([batch["label"] for batch in loaders[1]]).tolist()
    assert ext_labels == [dm.class_names.index(r["label"]) for r in ext_rows]
    assert {i for batch in loaders[0] for i in batch["id"]} == set(all_ids(dm, "test"))


def test_external_test_set_with_unknown_label_is_an_error(tmp_path: Path) -> None:
    main = write_layout(tmp_path / "main")
    ext_rows = [
        {"image_id": "x0", "label": "benign", "site": "back"},
        {"image_id": "x1", "label": "nevus", "site": "face"},
    ]
    ext = write_layout(tmp_path / "ext", ext_rows, name="external")
    spec = ExternalTestSet(csv_path=str(ext.csv_path), image_dir=str(ext.image_dir), text_json=str(ext.json_path))
    data_error(lambda: build(main, test_sets={"ext": spec}), "external.csv", "line 3", "'x1'", "'nevus'")


def test_predict_csv_without_labels(tmp_path: Path) -> None:
    main = write_layout(tmp_path, [r | {"patient": f"p{i}"} for i, r in enumerate(sample_rows())])
    predict_csv = tmp_path / "to_predict.csv"
    predict_csv.write_text("image_id\ns003\ns001\ns002\n", encoding="utf-8")  # no label, no patient column
    dm = build(main, group_column="patient", predict_csv=str(predict_csv))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    check_batch(batch, BATCH_KEYS, 16, 4)
    assert batch["id"] == ["s003", "s001", "s002"]
    assert (batch["label"] == -1).all()


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


def test_image_lookup_by_relative_path_name_and_absolute_path(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(12))
    # Like HAM's release: files in part_1/ and part_2/, while the CSV names them by file name *with* extension.
    for i, row in enumerate(layout.rows):
        source = layout.image_dir / f"{row['image_id']}.png"
        target = layout.image_dir / f"part_{1 + i % 2}" / source.name
        target.parent.mkdir(exist_ok=True)
        source.rename(target)
    rows = [dict(r) for r in layout.rows]
    for i, row in enumerate(rows):
        row["file"] = [
            f"{row['image_id']}.png",  # bare file name, searched in subfolders
            f"part_{1 + i % 2}/{row['image_id']}",  # relative path without extension
            f"./part_{1 + i % 2}/{row['image_id']}.png",  # "./" prefix
            str(layout.image_dir / f"part_{1 + i % 2}" / f"{row['image_id']}.png"),  # absolute, inside image_dir
        ][i % 4]
    write_layout(tmp_path / "csv", rows)
    dm = build(layout, csv_path=str(tmp_path / "csv" / "samples.csv"), image_column="file")
    for split in ("train", "val", "test"):
        records = dm._records[split]
        for image_id, path in zip(records.ids, records.image_paths, strict=True):
            assert path.name == f"{image_id}.png" and path.parent.name.startswith("part_")


def test_json_with_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text(layout.json_path.read_text(), encoding="utf-8-sig")
    assert build(layout).vocab_size > 0


def test_trailing_commas_do_not_shift_columns(tmp_path: Path) -> None:
    # "id,label\na,b," is a common export quirk; pandas' default would make the ids the index.
    layout = write_layout(tmp_path)
    lines = layout.csv_path.read_text().splitlines()
    layout.csv_path.write_text("\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n")
    dm = build(layout)
    ids = [i for split in ("train", "val", "test") for i in dm._records[split].ids]
    assert sorted(ids) == [r["image_id"] for r in layout.rows]


# --------------------------------------------------------------------------------------- 3. errors
def test_missing_image_file(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s002.png").unlink()
    message = data_error(lambda: build(layout), "Missing image files", "samples.csv", "line 4", "'s002'")
    assert "(1 row(s))" in message


@pytest.mark.parametrize("kind", ["random bytes", "truncated jpeg"])
def test_unreadable_image_fails_in_setup(tmp_path: Path, kind: str) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s003.png").unlink()
    bad = layout.image_dir / "s003.jpg"
    if kind == "random bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(300))
    else:
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(bad, "JPEG")
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    dm = build(layout)  # decoding is checked in setup(), not while reading
    data_error(lambda: dm.setup("fit"), "Unreadable image files", "samples.csv", "line 5", "s003.jpg")
    # Turned off, setup goes through (the bad file would only fail when loaded).
    build(layout, verify_images=False).setup("fit")


def test_image_with_trailing_bytes_is_fine(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s003.png").unlink()
    image = layout.image_dir / "s003.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image, "JPEG")
    image.write_bytes(image.read_bytes() + b"camera metadata after the end-of-image marker")
    build(layout).setup("fit")


def test_id_without_text_in_json(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text())
    del texts["s004"]
    layout.json_path.write_text(json.dumps(texts))
    data_error(lambda: build(layout), "samples.json", "samples.csv", "line 6", "'s004'")


def test_label_not_in_class_names(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(6, labels=("benign", "malignant", "benign")))
    message = data_error(
        lambda: build(layout, class_names=["benign"]), "samples.csv", "line 3", "'s001'", "'malignant'"
    )
    assert "line 2" not in message and "line 4" not in message


@pytest.mark.parametrize("option", ["id_column", "label_column"])
def test_csv_without_the_named_column_lists_the_columns(tmp_path: Path, option: str) -> None:
    layout = write_layout(tmp_path)
    message = data_error(lambda: build(layout, **{option: "diagnosis_code"}), "samples.csv", "'diagnosis_code'")
    for column in ("image_id", "label", "site", "age"):
        assert repr(column) in message


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text('{\n  "s000": "a text",\n  "s001": ,\n}\n', encoding="utf-8")
    data_error(lambda: build(layout), "samples.json", "line 3", "column 11")


def test_json_not_an_object(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text('["s000", "s001"]', encoding="utf-8")
    data_error(lambda: build(layout), "samples.json", "list")


def test_non_utf8_json(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_bytes('{"s000": "caf\u00e9 au lait"}'.encode("latin-1"))
    data_error(lambda: build(layout), "samples.json", "UTF-8")


def test_missing_json_file(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, text_json=str(tmp_path / "nope.json")), "nope.json", "does not exist")


def test_missing_empty_and_header_only_csv(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, csv_path=str(tmp_path / "absent.csv")), "absent.csv", "does not exist")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    data_error(lambda: build(layout, csv_path=str(empty)), "empty.csv", "empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("image_id,label\n")
    data_error(lambda: build(layout, csv_path=str(header_only)), "header.csv", "no rows")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("s000,benign\ns001,malignant\ns002,benign,extra\ns003,malignant\n", "line 4"),  # ragged row
        ('s000,benign\ns001,malignant\ns002,benign\n"s003,malignant\ns004,benign\n', "line 5"),  # unbalanced quote
        ("s000,benign,x\ns001,malignant,y\n", "line 2"),  # every row too long: pandas would shift the columns
    ],
    ids=["ragged", "unbalanced-quote", "extra-field-everywhere"],
)
def test_malformed_csv(tmp_path: Path, body: str, needle: str) -> None:
    layout = write_layout(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,label\n" + body, encoding="utf-8")
    data_error(lambda: build(layout, csv_path=str(bad)), "Malformed CSV", "bad.csv", needle)


def test_image_paths_escaping_image_dir(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "data")
    outside = write_image(tmp_path / "data" / "outside.png")  # exists, next to image_dir
    rows = [r | {"file": f"{r['image_id']}.png"} for r in layout.rows]
    rows[2]["file"] = "../outside.png"
    rows[5]["file"] = str(outside.resolve())
    rows[7]["file"] = "part_1/../../outside.png"
    write_layout(tmp_path / "csv", rows)
    message = data_error(
        lambda: build(layout, csv_path=str(tmp_path / "csv" / "samples.csv"), image_column="file"),
        "escape",
        "samples.csv",
        "line 4",
        "'../outside.png'",
        "line 7",
        str(outside.resolve()),
        "line 9",
    )
    assert "Missing" not in message and "(3 row(s))" in message


def test_empty_texts(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text()) | {"s001": "", "s006": "   \n"}
    layout.json_path.write_text(json.dumps(texts))
    data_error(lambda: build(layout), "Empty texts", "samples.csv", "line 3", "'s001'", "line 8", "'s006'")
    # The same from a text column with a missing value.
    rows = [r | {"report": "a report"} for r in layout.rows]
    rows[4]["report"] = ""
    column = write_layout(tmp_path / "column", rows)
    data_error(lambda: build(column, text_json=None, text_column="report"), "Empty texts", "line 6", "'s004'")


def test_missing_text_column(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, text_json=None, text_column="report"), "samples.csv", "'report'", "'site'")


def test_duplicated_ids(tmp_path: Path) -> None:
    rows = sample_rows(8)
    rows[5]["image_id"] = "s001"
    rows[7]["image_id"] = " s002"  # the same id once whitespace is stripped
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout), "Duplicated ids", "samples.csv", "line 3", "line 7", "'s001'", "line 4", "line 9")


def test_empty_id_and_label_values(tmp_path: Path) -> None:
    rows = sample_rows(8)
    rows[3]["label"] = ""
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout), "Empty label values", "samples.csv", "line 5", "'label'")


def test_template_naming_an_absent_column(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    message = data_error(
        lambda: build(layout, text_json=None, text_template="{age}-year-old {sex}"), "samples.csv", "['sex']"
    )
    assert "'site'" in message  # the available columns


def test_missing_image_dir(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, image_dir=str(tmp_path / "no_images")), "no_images", "image_dir")


def test_every_bad_row_is_listed_up_to_the_limit(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(30))
    for i in (3, 8, 20):
        (layout.image_dir / f"s{i:03d}.png").unlink()
    message = data_error(lambda: build(layout), "(3 row(s))", "line 5", "line 10", "line 22", "'s003'", "'s020'")
    assert message.count("\n  line ") == 3
    for i in range(4, 16):
        (layout.image_dir / f"s{i:03d}.png").unlink(missing_ok=True)
    message = data_error(lambda: build(layout), "(14 row(s))", "... and 4 more")
    assert message.count("\n  line ") == 10


def test_line_numbers_count_blank_lines_and_multiline_reports(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(8))
    (layout.image_dir / "s005.png").unlink()
    bad = tmp_path / "reports.csv"
    lines = ["image_id,label,report"]
    for i, row in enumerate(layout.rows):
        report = '"Findings: nodule.\nImpression: benign."' if i == 1 else "short report"
        lines.append(f"{row['image_id']},{row['label']},{report}")
        if i == 2:
            lines.append("")  # a blank line, which pandas skips
    bad.write_text("\n".join(lines) + "\n")
    physical = next(n for n, line in enumerate(bad.read_text().splitlines(), start=1) if line.startswith("s005,"))
    assert physical == 9  # header, s000, s001 (two lines), s002, s003, blank, s004, s005
    data_error(
        lambda: build(layout, csv_path=str(bad), text_json=None, text_column="report"), f"line {physical}:", "'s005'"
    )


# --------------------------------------------------------------------------- 4. collate and tokenizer
def test_collate_pads_to_the_longest_text() -> None:
    samples = [
        {"id": "a", "label": 1, "image": torch.zeros(3, 4, 4), "input_ids": [2, 10, 3]},
        {"id": "b", "label": 0, "image": torch.ones(3, 4, 4), "input_ids": [2, 11, 12, 13, 3]},
        {"id": "c", "label": 2, "image": torch.ones(3, 4, 4), "input_ids": [2, 3]},
    ]
    batch = Collate(pad_token_id=9)(samples)
    assert batch["id"] == ["a", "b", "c"]
    assert batch["label"].tolist() == [1, 0, 2] and batch["label"].dtype == torch.long
    assert batch["image"].shape == (3, 3, 4, 4) and batch["image_present"].tolist() == [True] * 3
    assert batch["input_ids"].tolist() == [[2, 10, 3, 9, 9], [2, 11, 12, 13, 3], [2, 3, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["text_present"].dtype == torch.bool and batch["text_present"].all()
    # One modality: only its keys.
    text_only = Collate()([{"id": "a", "label": 0, "input_ids": [1]}])
    assert set(text_only) == {"id", "label", "input_ids", "attention_mask", "text_present"}
    image_only = Collate()([{"id": "a", "label": 0, "image": torch.zeros(3, 2, 2)}])
    assert set(image_only) == {"id", "label", "image", "image_present"}


def test_module_batches_pad_with_the_tokenizer_pad_id(tmp_path: Path) -> None:
    dm = build(write_layout(tmp_path, sample_rows(40)), batch_size=8)
    dm.setup("fit")
    lengths = dict(zip(dm.datasets["train"].ids, map(len, dm.datasets["train"].token_ids), strict=True))
    assert len(set(lengths.values())) > 1
    for batch in dm.train_dataloader():
        mask = batch["attention_mask"]
        assert mask.sum(1).tolist() == [lengths[i] for i in batch["id"]]
        assert batch["input_ids"].shape[1] == max(lengths[i] for i in batch["id"])
        assert (batch["input_ids"][mask == 0] == dm.tokenizer.pad_token_id).all()
        assert (batch["input_ids"][mask == 1] != dm.tokenizer.pad_token_id).all()


def test_wordpiece_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    rows = sample_rows(16)
    texts = {}
    for i, row in enumerate(rows):
        row["fold"] = "test" if i < 4 else "val" if i < 8 else "train"
        texts[row["image_id"]] = {
            "test": "zebrafish zebrafish pattern",  # only in test texts (4 rows: frequent enough to be learned)
            "val": "quokka quokka pattern",  # only in val texts
            "train": "pigment network pattern",
        }[row["fold"]]
    dm = build(write_layout(tmp_path, rows, texts=texts), split_column="fold", vocab_size=200)
    vocab = dm.tokenizer.get_vocab()
    assert "network" in vocab and "pigment" in vocab and "pattern" in vocab
    assert "zebrafish" not in vocab and "quokka" not in vocab
    assert dm.tokenizer.tokenize("zebrafish") != ["zebrafish"]
    assert dm.vocab_size == len(dm.tokenizer) == len(vocab)
    assert dm.tokenizer.pad_token_id is not None and dm.tokenizer.pad_token_id < dm.vocab_size


def test_texts_longer_than_max_length_are_truncated(tmp_path: Path) -> None:
    rows = sample_rows(12)
    layout = write_layout(tmp_path, rows)
    texts = json.loads(layout.json_path.read_text())
    texts["s000"] = " ".join(["lesion"] * 50)
    texts["s005"] = " ".join(["pattern"] * 50)
    layout.json_path.write_text(json.dumps(texts))
    dm = build(layout, max_length=10)
    with pytest.warns(UserWarning, match="truncated"):
        dm.setup()
    lengths = {}
    for split in ("train", "val", "test"):
        dataset = dm.datasets[split]
        for sample_id, ids in zip(dataset.ids, dataset.token_ids, strict=True):
            lengths[sample_id] = len(ids)
            assert len(ids) <= 10
            assert ids[0] == dm.tokenizer.cls_token_id and ids[-1] == dm.tokenizer.sep_token_id
    assert lengths["s000"] == lengths["s005"] == 10
    assert min(lengths.values()) < 10  # short texts are not padded or cut at tokenization
