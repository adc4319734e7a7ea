"""Acceptance tests of the named-modality wiring: tabular inputs through the datamodule (training statistics only,
missing flags, unknown categories), prediction from a checkpoint with a CSV alone, name checks between data and
model, two image modalities, the tabular-only baseline, and a fusion of image + text + tabular."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from medfusion.data import ConfigError, MultimodalDataModule
from medfusion.encoders import ImageEncoder, TabularEncoder, TextEncoder
from medfusion.fusion import ConcatFusion
from medfusion.models import ImageClassifier, MultimodalClassifier, TabularClassifier
from medfusion.runs.checkpoints import CheckpointError, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_IMAGE = partial(ImageEncoder, "test_resnet")
SMALL_TEXT = partial(TextEncoder, "tiny")
SMALL_TABULAR = partial(TabularEncoder, dim=8, hidden=32, dropout=0.0)
SIZE = 16  # side of the generated images and of the model input
RED, BLUE = (200.0, 50.0, 50.0), (50.0, 50.0, 200.0)
BITS = ("image", "frontal", "lateral", "text", "tabular", "category")
SPLITS = ("train", "train", "val", "test")  # per block of cases


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


# ------------------------------------------------------------------------------------------------- data
def write_png(path: Path, blue: int, rng: np.random.Generator) -> None:
    """A 16x16 image, red (0) or blue (1), with a random shade and pixel noise."""
    colour = np.array(BLUE if blue else RED) + rng.uniform(-25, 25, 3)
    pixels = colour + rng.normal(0, 12, (SIZE, SIZE, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def make_cases(root: Path, key_bits: Sequence[str], label: Callable[[dict[str, int]], int], blocks: int = 16) -> Path:
    """A CSV of ``blocks * 2**len(key_bits)`` cases under ``root`` and their images; returns the CSV.

    Each case has six bits: the colour of its image found by id (``image``) and of its two views (``frontal``,
    ``lateral``: paths in ``frontal_path``, ``lateral_path``), a word of its ``report`` (``text``: alpha or beta),
    the sign of the numeric ``x`` (``tabular``) and the category ``c`` (a or b). The ``key_bits`` run through
    every combination in each block of cases (so every split holds each combination equally often and any bit
    not in the label is independent of it); the other bits are random. Blocks go to train, train, val, test in
    turn (``split`` column). The label column holds ``y<label(bits)>``.
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    per_block = 2 ** len(key_bits)
    for i in range(blocks * per_block):
        bits = {name: int(rng.integers(2)) for name in BITS}
        bits |= {name: (i >> k) & 1 for k, name in enumerate(key_bits)}
        case = f"c{i:03d}"
        for name, file in (("image", f"{case}.png"), ("frontal", f"{case}_f.png"), ("lateral", f"{case}_l.png")):
            write_png(root / "images" / file, bits[name], rng)
        filler = rng.choice(["small", "round", "flat", "dark", "irregular"], size=2)
        rows.append(
            {
                "id": case,
                "label": f"y{label(bits)}",
                "split": SPLITS[(i // per_block) % len(SPLITS)],
                "frontal_path": f"{case}_f.png",
                "lateral_path": f"{case}_l.png",
                "report": f"{filler[0]} lesion {'beta' if bits['text'] else 'alpha'} {filler[1]}",
                "x": f"{(1 if bits['tabular'] else -1) * rng.uniform(0.5, 2.0):.3f}",
                "c": "b" if bits["category"] else "a",
            }
        )
    csv_path = root / "cases.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


def datamodule(csv_path: Path, modalities: list[str] | None, **kwargs) -> MultimodalDataModule:
    options = {
        "csv_path": str(csv_path),
        "image_dir": str(csv_path.parent / "images"),
        "id_column": "id",
        "label_column": "label",
        "split_column": "split",
        "text_column": "report",
        "numeric_columns": ["x"],
        "categorical_columns": ["c"],
        "modalities": modalities,
        "image_size": SIZE,
        "augment": False,
        "vocab_size": 200,
        "batch_size": 16,
    }
    return MultimodalDataModule(**(options | kwargs))


def trainer(**kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "limit_val_batches": 0,
    }
    return L.Trainer(**(options | kwargs))


def held_out_accuracy(model: L.LightningModule, dm: MultimodalDataModule, absent: str | None = None) -> float:
    """Accuracy of ``model`` on the val and test splits (none of whose rows it trained on); with ``absent``, that
    modality is marked absent in every batch."""
    dm.setup("test")
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for loader in (dm.val_dataloader(), dm.test_dataloader()):
            for batch in loader:
                if absent is not None:
                    batch["present"][absent] = torch.zeros_like(batch["present"][absent])
                correct += int((model(batch).argmax(-1) == batch["label"]).sum())
                total += len(batch["label"])
    assert total == 2 * len(dm.datasets["val"])
    return correct / total


# ------------------------------------------------------------------------------ tabular through the datamodule
def write_table(path: Path, x: list, split: list[str], c: list[str] | None = None) -> Path:
    n = len(x)
    columns = {"id": [f"r{i}" for i in range(n)], "label": ["a", "b"] * (n // 2), "split": split, "x": x}
    pd.DataFrame(columns | {"c": c or ["u", "v"] * (n // 2)}).to_csv(path, index=False)
    return path


def tabular_data(csv_path: Path, **kwargs) -> MultimodalDataModule:
    return MultimodalDataModule(
        csv_path=str(csv_path),
        id_column="id",
        label_column="label",
        split_column="split",
        numeric_columns=["x"],
        categorical_columns=["c"],
        batch_size=8,
        **kwargs,
    )


SPLIT_8 = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
X_8 = [1.0, 2.0, 3.0, 6.0, 10.0, 20.0, 30.0, 40.0]


def test_numeric_columns_are_standardised_with_the_training_split_only(tmp_path: Path) -> None:
    dm = tabular_data(write_table(tmp_path / "a.csv", X_8, SPLIT_8))
    assert dm.modalities == ["tabular"] and dm.modality_kinds == {"tabular": "tabular"}
    assert dm.tabular.mean == pytest.approx([3.0]) and dm.tabular.std == pytest.approx([np.std([1, 2, 3, 6])])
    spec = dm.modality_specs["tabular"]
    assert spec["kind"] == "tabular" and spec["num_numeric"] == 1 and spec["features"] == ["x", "c"]
    assert spec["cardinalities"] == [4]  # unknown, missing, u, v

    test_changed = tabular_data(write_table(tmp_path / "b.csv", [*X_8[:-1], 1e6], SPLIT_8))
    assert (test_changed.tabular.mean, test_changed.tabular.std) == (dm.tabular.mean, dm.tabular.std)
    val_changed = tabular_data(write_table(tmp_path / "c.csv", [*X_8[:4], -1e6, *X_8[5:]], SPLIT_8))
    assert (val_changed.tabular.mean, val_changed.tabular.std) == (dm.tabular.mean, dm.tabular.std)
    train_changed = tabular_data(write_table(tmp_path / "d.csv", [7.0, *X_8[1:]], SPLIT_8))
    assert train_changed.tabular.mean == pytest.approx([4.5]) != dm.tabular.mean
    assert train_changed.tabular.std != dm.tabular.std

    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    expected = (torch.tensor([10.0, 20.0]) - 3.0) / dm.tabular.std[0]
    torch.testing.assert_close(batch["tabular"]["numeric"][:, 0], expected)  # with the training statistics


def test_a_missing_numeric_cell_is_flagged_and_zero(tmp_path: Path) -> None:
    dm = tabular_data(write_table(tmp_path / "a.csv", [1.0, None, 3.0, 6.0, None, 20.0, 30.0, 40.0], SPLIT_8))
    assert dm.tabular.mean == pytest.approx([10 / 3])  # of the observed training values
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["id"] == ["r4", "r5"]
    tabular = batch["tabular"]
    assert tabular["numeric"].dtype == torch.float32 and tabular["numeric_missing"].dtype == torch.bool
    assert tabular["numeric_missing"][:, 0].tolist() == [True, False]
    assert tabular["numeric"][0, 0].item() == 0.0 and tabular["numeric"][1, 0].item() != 0.0
    assert batch["present"]["tabular"].all()  # a missing value is not a missing modality


def test_an_unseen_category_in_the_predict_csv_is_the_unknown_index_and_counted(tmp_path: Path) -> None:
    csv_path = write_table(tmp_path / "train.csv", X_8, SPLIT_8)
    predict = tmp_path / "predict.csv"
    pd.DataFrame({"id": ["p0", "p1", "p2", "p3"], "x": [1, 2, 3, 4], "c": ["zzz", "u", "zzz", "v"]}).to_csv(
        predict, index=False
    )
    with pytest.warns(UserWarning, match=r"column 'c': 2 row\(s\) with 'zzz'"):
        dm = tabular_data(csv_path, predict_csv=str(predict))
        dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["id"] == ["p0", "p1", "p2", "p3"]
    u, v = (2 + dm.tabular.categories["c"].index(name) for name in ("u", "v"))
    assert batch["tabular"]["categorical"][:, 0].tolist() == [0, u, 0, v]
    assert dm.data_report["unknown_categories/predict"] == 2


# --------------------------------------------------------------------------- predict from a checkpoint, CSV alone
def three_modality_model(dm: MultimodalDataModule, **kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=dm.num_classes,
        modalities=dm.modality_specs,
        class_names=dm.class_names,
        class_counts=dm.class_counts,
        image_encoder=SMALL_IMAGE,
        text_encoder=SMALL_TEXT,
        tabular_encoder=SMALL_TABULAR,
        fusion=ConcatFusion,
        fusion_dim=32,
        **kwargs,
    )


def probabilities(predictions: list[dict]) -> dict[str, torch.Tensor]:
    return {i: p for batch in predictions for i, p in zip(batch["id"], batch["probs"], strict=True)}


def test_predict_from_a_checkpoint_with_a_csv_alone(tmp_path: Path) -> None:
    csv_path = make_cases(tmp_path / "data", ["image", "text", "tabular"], lambda b: b["image"] ^ b["tabular"], 4)
    rows = tmp_path / "rows.csv"
    shutil.copy(csv_path, rows)
    columns = {"image_dir": str(csv_path.parent / "images"), "text_column": "report"}
    columns |= {"numeric_columns": ["x"], "categorical_columns": ["c"], "id_column": "id", "image_size": SIZE}
    dm = datamodule(csv_path, None, predict_csv=str(rows))
    assert dm.modalities == ["image", "text", "tabular"]
    model = three_modality_model(dm, lr=1e-3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit = trainer(max_steps=3, enable_checkpointing=True, callbacks=[checkpoints])
    fit.fit(model, datamodule=dm)
    ckpt = checkpoints.last_model_path
    before = probabilities(fit.predict(model, datamodule=dm, ckpt_path=ckpt))
    assert len(before) == 32

    state = read_checkpoint(ckpt)
    assert state["medfusion"]["format"] == 3
    data_state = state[type(dm).__qualname__]
    assert data_state["class_names"] == dm.class_names == ["y0", "y1"]
    assert data_state["tabular"]["mean"] == dm.tabular.mean and data_state["tabular"]["std"] == dm.tabular.std
    assert data_state["tabular"]["categories"] == {"c": ["a", "b"]}
    assert data_state["tokenizer"] and "beta" in data_state["tokenizer"]["json"]

    csv_path.unlink()  # the training CSV is gone: the checkpoint carries what the data needs
    dm2 = MultimodalDataModule(from_checkpoint=ckpt, predict_csv=str(rows), **columns)
    assert dm2.class_names == dm.class_names and dm2.modality_specs == dm.modality_specs
    rebuilt = three_modality_model(dm2)
    after = probabilities(trainer().predict(rebuilt, datamodule=dm2, ckpt_path=ckpt))
    assert sorted(after) == sorted(before)
    for case, probs in before.items():
        torch.testing.assert_close(after[case], probs, rtol=0, atol=1e-6)
    assert not all(torch.allclose(p, before["c000"]) for p in before.values())  # not a constant model

    old = tmp_path / "old.ckpt"
    torch.save({**state, "medfusion": {**state["medfusion"], "format": 2}}, old)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(old)
    assert "format 2" in str(info.value) and "format 3" in str(info.value)


# ----------------------------------------------------------------------------------------------- name checks
def test_the_data_and_the_model_must_name_the_same_modalities(tmp_path: Path) -> None:
    csv_path = make_cases(tmp_path, ["image"], lambda b: b["image"], blocks=4)
    dm = datamodule(csv_path, ["image", "tabular"])
    model = MultimodalClassifier(num_classes=2, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT, vocab_size=64)
    assert list(model.encoders) == ["image", "text"]
    both = re.escape("['image', 'tabular']") + ".*" + re.escape("['image', 'text']")
    with pytest.raises(ConfigError, match=both):
        trainer(max_steps=1).fit(model, datamodule=dm)

    with pytest.raises(ConfigError, match=r"ImageClassifier.*'image'.*'tabular'"):
        ImageClassifier(num_classes=2, modalities=dm.modality_specs, image_encoder=SMALL_IMAGE)
    image_only = ImageClassifier(num_classes=2, image_encoder=SMALL_IMAGE)
    with pytest.raises(ConfigError, match=re.escape("['image', 'tabular']") + ".*" + re.escape("['image']")):
        trainer(max_steps=1).fit(image_only, datamodule=dm)


# ----------------------------------------------------------------------------------------- two image modalities
def test_two_image_modalities_learn_a_label_that_needs_both_views(tmp_path: Path) -> None:
    same_colour = make_cases(tmp_path, ["frontal", "lateral"], lambda b: int(b["frontal"] == b["lateral"]), blocks=32)
    views = {"frontal": "frontal_path", "lateral": "lateral_path"}
    no_other = {"text_column": None, "numeric_columns": None, "categorical_columns": None}
    dm = datamodule(same_colour, None, image_columns=views, **no_other)
    assert dm.modalities == ["frontal", "lateral"]
    assert dm.modality_specs == {"frontal": {"kind": "image"}, "lateral": {"kind": "image"}}
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["present"]) == {"frontal", "lateral"}
    assert batch["frontal"].shape == batch["lateral"].shape == (16, 3, SIZE, SIZE)
    assert not torch.equal(batch["frontal"], batch["lateral"])  # each view read from its own column

    model = MultimodalClassifier(
        num_classes=2, modalities=dm.modality_specs, image_encoder=SMALL_IMAGE, fusion_dim=32, lr=3e-3
    )
    frontal, lateral = model.encoders["frontal"], model.encoders["lateral"]
    assert isinstance(frontal, ImageEncoder) and isinstance(lateral, ImageEncoder) and frontal is not lateral
    assert not {id(p) for p in frontal.parameters()} & {id(p) for p in lateral.parameters()}
    assert set(model.missing) == {"frontal", "lateral"}
    trainer(max_epochs=12).fit(model, datamodule=dm)
    assert not torch.equal(next(frontal.parameters()), next(lateral.parameters()))  # trained apart
    accuracy = held_out_accuracy(model, dm)
    assert accuracy > 0.9, accuracy
    for view in views:  # either view alone: 0.5 (every colour pair equally often in the 64 held-out rows)
        alone = held_out_accuracy(model, dm, absent=view)
        assert alone < 0.75, (view, alone)


# ------------------------------------------------------------------------------------------- tabular baseline
def test_tabular_classifier_learns_from_the_tabular_columns_alone(tmp_path: Path) -> None:
    # label: the sign of x, flipped for category b; x or c alone: 0.5
    csv_path = make_cases(tmp_path, ["tabular", "category"], lambda b: b["tabular"] ^ b["category"], blocks=32)
    dm = datamodule(csv_path, ["tabular"], batch_size=32)
    model = TabularClassifier(
        num_classes=2, modalities=dm.modality_specs, tabular_encoder=SMALL_TABULAR, lr=1e-2, scheduler="constant"
    )
    assert list(model.encoders) == ["tabular"] and isinstance(model.encoders["tabular"], TabularEncoder)
    trainer(max_epochs=25).fit(model, datamodule=dm)
    accuracy = held_out_accuracy(model, dm)
    assert accuracy > 0.9, accuracy


# -------------------------------------------------------------------------------- image + text + tabular fusion
def test_image_text_tabular_fusion_learns_a_label_that_needs_all_three(tmp_path: Path) -> None:
    """Eight classes, one per combination of the image, text and tabular bits, each combination equally often in
    every split: any two modalities leave two classes indistinguishable (0.5 at best), all three give 1.0.

    (A 2-class label image XOR text XOR tabular has no signal in any bit or pair of bits, so encoders trained from
    scratch get no gradient towards any one of them; it stays at chance in a test-sized budget.)"""
    eight_classes = lambda b: 4 * b["image"] + 2 * b["text"] + b["tabular"]  # noqa: E731
    triple = make_cases(tmp_path, ["image", "text", "tabular"], eight_classes, blocks=32)  # ~20 training rows a class
    dm = datamodule(triple, ["image", "text", "tabular"], categorical_columns=None)
    assert dm.num_classes == 8
    model = three_modality_model(dm, lr=3e-3, scheduler="constant")
    assert list(model.encoders) == ["image", "text", "tabular"]
    assert model.fusion.dims == {name: encoder.out_dim for name, encoder in model.encoders.items()}
    trainer(max_epochs=20).fit(model, datamodule=dm)
    accuracy = held_out_accuracy(model, dm)
    assert accuracy > 0.85, accuracy
    for name in model.encoders:  # replaced by its stand-in: two classes per pair of bits look the same (0.5)
        without = held_out_accuracy(model, dm, absent=name)
        assert without < 0.75, (name, without)
