"""Tests of the samples and batches (medfusion.data): the batch contract of named modalities, image decoding to
three channels, collate and padding, the tokenizer, external test sets and prediction CSVs.

The HAM10000 test uses the real metadata CSV (../shared/data) with 8x8 placeholder JPEGs; the rest build tiny
CSV/JSON/image layouts in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import (
    MODALITIES,
    all_ids,
    build,
    check_batch,
    data_error,
    sample_rows,
    write_image,
    write_layout,
)
from PIL import Image

from medfusion.data import Collate, ConfigError
from medfusion.data import TestSet as ExternalTestSet  # aliased: pytest would try to collect Test*
from medfusion.data.images import load_rgb, to_8bit


# ------------------------------------------------------------------------------------- 1. HAM10000
def test_ham_batches_have_the_documented_contract(ham_dm) -> None:
    loaders = {
        "train": ham_dm.train_dataloader(),
        "val": ham_dm.val_dataloader(),
        "test": ham_dm.test_dataloader(),
        "predict": ham_dm.predict_dataloader(),
    }
    for name, loader in loaders.items():
        batch = next(iter(loader))
        check_batch(batch, MODALITIES, image_size=32, batch_size=8)
        if name == "predict":
            assert (batch["label"] == -1).all()
        else:
            assert ((batch["label"] >= 0) & (batch["label"] < 7)).all()
        mask = batch["text"]["attention_mask"].bool()
        assert (batch["text"]["input_ids"][~mask] == ham_dm.tokenizer.pad_token_id).all()


# ----------------------------------------------------------------------------------- 2. modalities
def test_image_only_and_text_only_batches(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    image_only = build(layout, modalities=["image"], text_json=None)
    image_only.setup()
    assert image_only.tokenizer is None and image_only.vocab_size is None
    check_batch(next(iter(image_only.train_dataloader())), ["image"], 16, 4)

    # Text only needs no image_dir at all (and ignores a broken one).
    text_only = build(layout, modalities=["text"], image_dir=None)
    text_only.setup()
    for loader in (text_only.train_dataloader(), text_only.val_dataloader(), text_only.test_dataloader()):
        check_batch(next(iter(loader)), ["text"], 16, 4)

    # Named image modalities, each from its own column of paths, next to the text: one input and one present
    # flag per name. With allow_missing an empty path cell is a sample without that image, counted per split.
    rows = sample_rows()
    for i, row in enumerate(rows):
        row |= {"front": f"{row['image_id']}.png", "side": f"lateral/{row['image_id']}.png"}
        row["fold"] = "train" if i < 16 else "val" if i < 20 else "test"
    rows[2]["side"] = ""  # s002 (train) has no lateral view
    views = write_layout(tmp_path / "views", rows)
    for i, row in enumerate(rows[:2] + rows[3:]):
        write_image(views.image_dir / row["side"], value=255 - (i * 37) % 256)  # other pixels than the frontal
    names = ["frontal", "lateral", "text"]
    columns = {"frontal": "front", "lateral": "side"}
    data_error(lambda: build(views, image_columns=columns), "Empty image path values", "line 4", "'side'")
    dm = build(views, image_columns=columns, split_column="fold", allow_missing=["lateral"])
    dm.setup()
    assert dm.modalities == names and dm.modality_kinds == {"frontal": "image", "lateral": "image", "text": "text"}
    assert [spec["kind"] for spec in dm.modality_specs.values()] == ["image", "image", "text"]
    present = {}
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        for batch in loader:
            check_batch(batch, names, 16, 4, all_present=False)
            assert batch["present"]["frontal"].all() and batch["present"]["text"].all()
            for row, sample_id in enumerate(batch["id"]):
                present[sample_id] = batch["present"]["lateral"][row].item()
                if present[sample_id]:
                    assert not torch.equal(batch["frontal"][row], batch["lateral"][row])
                else:  # the placeholder of an absent image: zeros, never encoded
                    assert not batch["lateral"][row].any()
    assert set(present) == {r["image_id"] for r in rows}  # 16 training rows: no batch dropped
    assert [i for i, p in present.items() if not p] == ["s002"]
    assert dm.data_report["missing_lateral/train"] == 1
    assert dm.data_report["missing_lateral/val"] == dm.data_report["missing_lateral/test"] == 0
    # A row with none of its modalities is an error naming it; a name no option describes is a ConfigError.
    rows[2]["front"] = ""
    texts = json.loads(views.json_path.read_text())
    del texts["s002"]
    empty = write_layout(tmp_path / "empty", rows, texts=texts)
    data_error(
        lambda: build(empty, image_dir=str(views.image_dir), image_columns=columns, allow_missing=names),
        "Samples with none of their modalities",
        "samples.csv",
        "line 4",
        "'s002'",
    )
    with pytest.raises(ConfigError) as info:
        build(views, image_columns=columns, modalities=["frontal", "oblique", "text"])
    for needle in ("'oblique'", "'image'", "['frontal', 'lateral']", "'text'", "'tabular'", "Fix"):
        assert needle in str(info.value), needle


# --------------------------------------------------------------------------------------- 3. images
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


# --------------------------------------------------------------------- 4. test sets and prediction
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
    check_batch(batch, MODALITIES, 16, 4)
    assert batch["id"] == ["s003", "s001", "s002"]
    assert (batch["label"] == -1).all()


# ------------------------------------------------------------------------ 5. collate and tokenizer
def test_collate_pads_to_the_longest_text() -> None:
    both = {"image": True, "text": True}
    samples = [
        {"id": "a", "label": 1, "present": both, "image": torch.zeros(3, 4, 4), "text": [2, 10, 3]},
        {"id": "b", "label": 0, "present": both, "image": torch.ones(3, 4, 4), "text": [2, 11, 12, 13, 3]},
        {"id": "c", "label": 2, "present": both, "image": torch.ones(3, 4, 4), "text": [2, 3]},
    ]
    batch = Collate(pad_token_id=9)(samples)
    assert batch["id"] == ["a", "b", "c"]
    assert batch["label"].tolist() == [1, 0, 2] and batch["label"].dtype == torch.long
    assert batch["image"].shape == (3, 3, 4, 4) and batch["present"]["image"].tolist() == [True] * 3
    text = batch["text"]
    assert text["input_ids"].tolist() == [[2, 10, 3, 9, 9], [2, 11, 12, 13, 3], [2, 3, 9, 9, 9]]
    assert text["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert text["input_ids"].dtype == text["attention_mask"].dtype == torch.long
    assert batch["present"]["text"].dtype == torch.bool and batch["present"]["text"].all()
    # One modality: only its keys.
    text_only = Collate()([{"id": "a", "label": 0, "present": {"text": True}, "text": [1]}])
    assert set(text_only) == {"id", "label", "present", "text"} and set(text_only["present"]) == {"text"}
    assert set(text_only["text"]) == {"input_ids", "attention_mask"}
    image_only = Collate()([{"id": "a", "label": 0, "present": {"image": True}, "image": torch.zeros(3, 2, 2)}])
    assert set(image_only) == {"id", "label", "present", "image"} and set(image_only["present"]) == {"image"}


def test_module_batches_pad_with_the_tokenizer_pad_id(tmp_path: Path) -> None:
    dm = build(write_layout(tmp_path, sample_rows(40)), batch_size=8)
    dm.setup("fit")
    lengths = dict(zip(dm.datasets["train"].ids, map(len, dm.datasets["train"].token_ids), strict=True))
    assert len(set(lengths.values())) > 1
    for batch in dm.train_dataloader():
        input_ids, mask = batch["text"]["input_ids"], batch["text"]["attention_mask"]
        assert mask.sum(1).tolist() == [lengths[i] for i in batch["id"]]
        assert input_ids.shape[1] == max(lengths[i] for i in batch["id"])
        assert (input_ids[mask == 0] == dm.tokenizer.pad_token_id).all()
        assert (input_ids[mask == 1] != dm.tokenizer.pad_token_id).all()


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
