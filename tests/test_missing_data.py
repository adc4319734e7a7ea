"""Missing modalities, the data side: allowed only when asked for (else a DataError naming the file, line and id),
marked in the batch's ``present``, collated into placeholders; the no_<name> robustness test sets (image and text,
and a tabular third) next to the external ones."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from data_helpers import build, data_error, ham_datamodule, sample_rows, write_layout
from missing_helpers import SMALL_TABULAR, spy
from test_models import SMALL_IMAGE, SMALL_TEXT

from medfusion.data import Collate, ConfigError
from medfusion.data import TestSet as ExternalTestSet
from medfusion.data.tabular import MISSING
from medfusion.models import MultimodalClassifier

NO_IMAGE = {"s002", "s007", "s013"}  # empty image cells
NO_TEXT = {"s004", "s009"}  # no JSON entry
EMPTY_TEXT = {"s011"}  # an empty JSON text
NO_TABULAR = {"s007", "s016"}  # every tabular cell (age, site) empty
TABULAR = {"numeric_columns": ["age"], "categorical_columns": ["site"]}  # the tabular modality of the layouts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only spin on a busy box


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


def gappy_layout(root: Path):
    """24 samples with an image column; some cells empty, some ids without (or with an empty) text, some rows
    without any tabular value."""
    rows = []
    for r in sample_rows():
        row = r | {"file": "" if r["image_id"] in NO_IMAGE else f"{r['image_id']}.png"}
        rows.append(row | {"age": "", "site": ""} if r["image_id"] in NO_TABULAR else row)
    layout = write_layout(root, rows)
    texts = json.loads(layout.json_path.read_text())
    for image_id in NO_TEXT:
        del texts[image_id]
    texts |= dict.fromkeys(EMPTY_TEXT, "  ")
    layout.json_path.write_text(json.dumps(texts))
    return layout


# ------------------------------------------------------------------------------------------ data
def test_missing_inputs_are_errors_unless_allowed(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    message = data_error(
        lambda: build(layout, image_column="file"), "Empty image path values", "samples.csv", "line 4", "allow_missing"
    )
    assert "line 9" in message and "line 15" in message  # s007, s013
    # Images allowed, texts not: the JSON's missing ids are named, then the empty text.
    data_error(
        lambda: build(layout, image_column="file", allow_missing=["image"]),
        "no text in",
        "samples.json",
        "line 6",
        "'s004'",
        "line 11",
        "allow_missing: [text]",
    )
    texts = json.loads(layout.json_path.read_text())
    layout.json_path.write_text(json.dumps(texts | dict.fromkeys(NO_TEXT, "a text")))
    data_error(lambda: build(layout, image_column="file", allow_missing=["image"]), "Empty texts", "line 13", "'s011'")


def test_a_path_to_no_file_stays_an_error_when_images_may_be_missing(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    (layout.image_dir / "s005.png").unlink()
    data_error(
        lambda: build(layout, image_column="file", allow_missing=["image", "text"]),
        "Missing image files",
        "line 7",
        "'s005.png'",
    )


def test_a_sample_with_none_of_its_modalities_is_an_error(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text())
    del texts["s002"], texts["s007"]  # neither has an image; s007 has no tabular value either
    layout.json_path.write_text(json.dumps(texts))
    message = data_error(
        lambda: build(layout, image_column="file", allow_missing=["image", "text"]),
        "Samples with none of their modalities",
        "line 4",
        "'s002'",
    )
    assert "line 9" in message and "'s007'" in message
    # With the tabular modality s002 still has its clinical variables, s007 has nothing at all.
    message = data_error(
        lambda: build(layout, image_column="file", allow_missing=["image", "text", "tabular"], **TABULAR),
        "Samples with none of their modalities",
        "line 9",
        "'s007'",
    )
    assert "s002" not in message
    # Tabular values not allowed to be missing: s007's empty cells are a tabular input whose values are missing.
    dm = build(layout, image_column="file", allow_missing=["image", "text"], **TABULAR)
    assert dm.modalities == ["image", "text", "tabular"]


def test_allow_missing_options_are_checked(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    data_error(lambda: build(layout, allow_missing=["image"]), "image_column", "allow_missing")
    with pytest.raises(ConfigError, match="not among the modalities"):
        build(layout, modalities=["image"], text_json=None, allow_missing=["text"])
    with pytest.raises(ConfigError, match="not among the modalities"):
        build(layout, allow_missing=["tabular"])  # no tabular columns: no tabular modality


def test_allowed_missing_inputs_are_marked_in_every_batch(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    dm = build(
        layout,
        image_column="file",
        allow_missing=["image", "text", "tabular"],
        mean=(0, 0, 0),
        std=(1, 1, 1),
        **TABULAR,
    )
    dm.setup()
    empty_text = dm.tokenizer("")["input_ids"]
    assert empty_text == [dm.tokenizer.cls_token_id, dm.tokenizer.sep_token_id]
    seen = set()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert list(batch["present"]) == ["image", "text", "tabular"]
            for row, sample_id in enumerate(batch["id"]):
                seen.add(sample_id)
                has = {
                    "image": sample_id not in NO_IMAGE,
                    "text": sample_id not in NO_TEXT | EMPTY_TEXT,
                    "tabular": sample_id not in NO_TABULAR,
                }
                assert {name: flag[row].item() for name, flag in batch["present"].items()} == has
                assert (batch["image"][row].abs().sum() > 0) == has["image"]  # absent: a zeros placeholder
                if not has["text"]:
                    length = int(batch["text"]["attention_mask"][row].sum())
                    assert batch["text"]["input_ids"][row, :length].tolist() == empty_text
                if not has["tabular"]:  # the row is still there, every value flagged missing
                    assert batch["tabular"]["numeric_missing"][row].all()
                    assert batch["tabular"]["categorical"][row].tolist() == [MISSING]
                else:
                    assert not batch["tabular"]["numeric_missing"][row].any()
    assert seen == {r["image_id"] for r in layout.rows}
    report = dm.data_report
    assert sum(report[f"missing_image/{s}"] for s in ("train", "val", "test")) == len(NO_IMAGE)
    assert sum(report[f"missing_text/{s}"] for s in ("train", "val", "test")) == len(NO_TEXT | EMPTY_TEXT)
    assert sum(report[f"missing_tabular/{s}"] for s in ("train", "val", "test")) == len(NO_TABULAR)


def test_missing_text_cells_of_a_text_column(tmp_path: Path) -> None:
    rows = [r | {"report": "" if r["image_id"] in NO_TEXT else f"report of {r['image_id']}"} for r in sample_rows()]
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout, text_json=None, text_column="report"), "Empty texts", "line 6", "allow_missing")
    dm = build(layout, text_json=None, text_column="report", allow_missing=["text"])
    records = [dm._records[s] for s in ("train", "val", "test")]
    assert {i for r in records for i, t in zip(r.ids, r.texts, strict=True) if t is None} == NO_TEXT


def test_template_texts_are_never_missing(ham_metadata_csv) -> None:
    """HAM10000's templated texts: a missing age is a missing field ("unknown"), not a missing text."""
    dm = ham_datamodule(ham_metadata_csv, modalities=["text"], allow_missing=["text"], seed=0)
    dm.setup("fit")
    assert dm.data_report["missing_text/train"] == dm.data_report["missing_text/val"] == 0
    assert all(t is not None for t in dm._records["train"].texts)


def tabular_row(value: float) -> dict[str, np.ndarray]:
    """A sample's tabular entry as the dataset gives it: numpy rows of 2 numeric and 1 categorical column."""
    return {
        "numeric": np.array([value, 0.0], dtype=np.float32),
        "numeric_missing": np.array([False, True]),
        "categorical": np.array([2], dtype=np.int64),
    }


def test_collate_marks_absent_samples_and_builds_placeholders() -> None:
    def sample(sample_id, image, text, tabular_present):
        present = {"image": image is not None, "text": text is not None, "tabular": tabular_present}
        row = tabular_row(float(ord(sample_id)))
        return {"id": sample_id, "label": 0, "present": present, "image": image, "text": text, "tabular": row}

    samples = [
        sample("a", torch.ones(3, 4, 4), [2, 10, 11, 3], True),
        sample("b", None, [2, 12, 3], True),
        sample("c", torch.ones(3, 4, 4), None, False),
    ]
    batch = Collate(pad_token_id=0, missing_text_ids=(2, 3))(samples)
    assert {name: flag.tolist() for name, flag in batch["present"].items()} == {
        "image": [True, False, True],
        "text": [True, True, False],
        "tabular": [True, True, False],
    }
    assert all(flag.dtype == torch.bool for flag in batch["present"].values())
    assert batch["image"].shape == (3, 3, 4, 4) and batch["image"][1].eq(0).all() and batch["image"][0].eq(1).all()
    assert batch["text"]["input_ids"].tolist() == [[2, 10, 11, 3], [2, 12, 3, 0], [2, 3, 0, 0]]
    assert batch["text"]["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    # Tabular rows are stacked as they are, absent ones included (present says whether the model may use them).
    tabular = batch["tabular"]
    assert tabular["numeric"].dtype == torch.float32 and tabular["numeric"][:, 0].tolist() == [97.0, 98.0, 99.0]
    assert tabular["numeric_missing"].dtype == torch.bool and tabular["numeric_missing"].tolist() == [[False, True]] * 3
    assert tabular["categorical"].dtype == torch.long and tabular["categorical"].shape == (3, 1)
    # No image in the whole batch: the placeholder needs its shape.
    no_images = [{**s, "image": None, "present": {**s["present"], "image": False}} for s in samples]
    assert Collate(image_shape=(3, 5, 5))(no_images)["image"].shape == (3, 3, 5, 5)
    with pytest.raises(ValueError, match="image_shape"):
        Collate()(no_images)


# ------------------------------------------------------------------------------ robustness sets
def test_robustness_test_sets_next_to_the_external_ones(tmp_path: Path, trainer_factory) -> None:
    main = write_layout(tmp_path / "main")
    ext_rows = [{"image_id": f"x{i}", "label": ["benign", "malignant"][i % 2], "site": "back"} for i in range(5)]
    ext = write_layout(tmp_path / "ext", ext_rows, name="external")
    spec = ExternalTestSet(csv_path=str(ext.csv_path), image_dir=str(ext.image_dir), text_json=str(ext.json_path))
    dm = build(main, test_sets={"ext": spec}, robustness=True)
    assert dm.test_set_names == ["test", "ext", "no_image", "no_text"]  # in modality order
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 4
    ids = [[i for batch in loader for i in batch["id"]] for loader in loaders]
    assert ids[2] == ids[3] == ids[0] and len(ids[0]) == len(dm._records["test"].ids) > 0 and len(ids[1]) == 5
    for loader, image, text in zip(loaders, (True, True, False, True), (True, True, True, False), strict=True):
        for batch in loader:
            assert batch["present"]["image"].eq(image).all() and batch["present"]["text"].eq(text).all()
    model = MultimodalClassifier(
        num_classes=2, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT, modalities=dm.modality_specs
    )
    trainer = trainer_factory()
    trainer.test(model, datamodule=dm, verbose=False)
    for prefix in ("test/", "test_ext/", "test_no_image/", "test_no_text/"):
        assert f"{prefix}acc" in trainer.callback_metrics and f"{prefix}loss" in trainer.callback_metrics


def test_robustness_test_sets_of_three_modalities(tmp_path: Path, trainer_factory) -> None:
    main = write_layout(tmp_path / "main")
    dm = build(main, robustness=True, **TABULAR)
    assert dm.modalities == ["image", "text", "tabular"]
    assert dm.test_set_names == ["test", "no_image", "no_text", "no_tabular"]
    dm.setup("test")
    loaders = dm.test_dataloader()
    for loader, absent in zip(loaders, (None, "image", "text", "tabular"), strict=True):
        for batch in loader:
            assert {name: bool(flag.all()) for name, flag in batch["present"].items()} == {
                name: name != absent for name in dm.modalities
            }
            assert not any(flag.any() for name, flag in batch["present"].items() if name == absent)
    # The model never encodes the tabular inputs of test_no_tabular: its stand-in takes their place.
    model = MultimodalClassifier(
        num_classes=2,
        image_encoder=SMALL_IMAGE,
        text_encoder=SMALL_TEXT,
        tabular_encoder=SMALL_TABULAR,
        modalities=dm.modality_specs,
    )
    calls = spy(model.encoders["tabular"])
    trainer = trainer_factory()
    trainer.test(model, datamodule=dm, verbose=False)
    assert len(calls) == 3 * len(loaders[0])  # test, test_no_image and test_no_text
    for prefix in ("test/", "test_no_image/", "test_no_text/", "test_no_tabular/"):
        assert f"{prefix}acc" in trainer.callback_metrics and f"{prefix}loss" in trainer.callback_metrics


def test_robustness_needs_two_modalities_and_free_names(tmp_path: Path) -> None:
    main = write_layout(tmp_path / "main")
    with pytest.raises(ValueError, match="robustness"):
        build(main, modalities=["image"], text_json=None, robustness=True)
    spec = ExternalTestSet(csv_path=str(main.csv_path))
    with pytest.raises(ValueError, match="no_text"):
        build(main, test_sets={"no_text": spec}, robustness=True)
    with pytest.raises(ValueError, match="no_tabular"):
        build(main, test_sets={"no_tabular": spec}, robustness=True, **TABULAR)
