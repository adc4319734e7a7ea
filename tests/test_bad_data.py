"""Bad data found mid-run: images that stop decoding (raise, or skip and count), truncated texts counted in the
data report and logged, non-UTF-8 text files named with the fix."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from data_helpers import build, data_error, write_layout
from lightning.pytorch.loggers import Logger
from test_models import SMALL_IMAGE, SMALL_TEXT

from medfusion.data import DataError, MultimodalDataModule
from medfusion.models import ImageClassifier, TextClassifier


class Recorder(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))


def corrupt(path: str | Path) -> None:
    Path(path).write_bytes(np.random.default_rng(0).bytes(300))


def image_module(tmp_path: Path, **kwargs) -> MultimodalDataModule:
    """Image-only data, set up for fit (so every image passed the up-front check)."""
    dm = build(write_layout(tmp_path), modalities=["image"], text_json=None, **kwargs)
    dm.setup("fit")
    return dm


def line_of(dm: MultimodalDataModule, sample_id: str) -> int:
    return int(sample_id.removeprefix("s")) + 2  # write_layout's rows are s000, s001, ... from line 2


# ------------------------------------------------------------------------------ unreadable images
def test_an_image_corrupted_after_setup_raises_naming_file_and_line(tmp_path: Path) -> None:
    dm = image_module(tmp_path)
    train = dm.datasets["train"]
    bad = train.images["image"][1]
    corrupt(bad)
    with pytest.raises(DataError) as info:
        list(dm.train_dataloader())
    message = str(info.value)
    for needle in (str(bad), "samples.csv", f"line {line_of(dm, train.ids[1])}:", "on_bad_image: skip", "Fix"):
        assert needle in message, message


def test_skip_replaces_by_the_next_readable_sample_and_warns_once(tmp_path: Path) -> None:
    dm = image_module(tmp_path, on_bad_image="skip")
    train = dm.datasets["train"]
    corrupt(train.images["image"][2])
    expected = rf"Unreadable image .*{train.ids[2]}\.png \(.*samples\.csv line {line_of(dm, train.ids[2])}\)"
    with pytest.warns(UserWarning, match=expected):
        sample = train[2]
    assert sample["id"] == train.ids[3] and sample["replaced"] == 1
    assert torch.equal(sample["image"], train[3]["image"]) and train[3]["replaced"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad: no second warning
        assert train[2]["id"] == train.ids[3]
    # The last sample wraps around to the first.
    corrupt(train.images["image"][-1])
    with pytest.warns(UserWarning):
        assert train[len(train) - 1]["id"] == train.ids[0]


def test_skip_counts_travel_through_dataloader_workers(tmp_path: Path) -> None:
    dm = image_module(tmp_path, on_bad_image="skip", num_workers=1)
    train = dm.datasets["train"]
    bad = {train.ids[0], train.ids[5]}
    for i in (0, 5):
        corrupt(train.images["image"][i])
    dm.batch_size = len(train)  # one batch: nothing dropped by drop_last
    for _ in range(2):  # two epochs, the same count
        batches = list(dm.train_dataloader())
        assert sum(int(b["replaced"]) for b in batches) == 2
        ids = [i for b in batches for i in b["id"]]
        assert len(ids) == len(train) and not bad & set(ids)


def test_every_image_unreadable_raises_instead_of_looping(tmp_path: Path) -> None:
    dm = image_module(tmp_path, on_bad_image="skip")
    val = dm.datasets["val"]
    for path in val.images["image"]:
        corrupt(path)
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"None of the \d+ samples of .*samples\.csv"):
        val[0]


def test_skipped_images_are_logged_as_epoch_sums(tmp_path: Path) -> None:
    dm = image_module(tmp_path, on_bad_image="skip")
    train, val = dm.datasets["train"], dm.datasets["val"]
    for path in (train.images["image"][0], train.images["image"][4], val.images["image"][1]):
        corrupt(path)
    dm.batch_size = len(train)
    model = ImageClassifier(
        num_classes=2, modalities=dm.modality_specs, image_encoder=SMALL_IMAGE, scheduler="constant"
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.warns(UserWarning, match="Unreadable image"):
        trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["train/skipped_images"].item() == 2
    assert trainer.callback_metrics["val/skipped_images"].item() == 1


# ---------------------------------------------------------------------------------- truncation
def long_text_layout(root: Path):
    layout = write_layout(root)
    texts = json.loads(layout.json_path.read_text())
    texts["s000"] = " ".join(["lesion"] * 50)
    texts["s005"] = " ".join(["pattern"] * 50)
    layout.json_path.write_text(json.dumps(texts))
    return layout


def test_truncated_texts_are_counted_in_the_data_report(tmp_path: Path) -> None:
    dm = build(long_text_layout(tmp_path), max_length=24)
    with pytest.warns(UserWarning, match="truncated"):
        dm.setup()
    report = dm.data_report
    assert set(report) == {f"truncated_texts/{s}" for s in ("train", "val", "test", "predict")}
    assert report["truncated_texts/train"] + report["truncated_texts/val"] + report["truncated_texts/test"] == 2
    split_of = {i: s for s in ("train", "val", "test") for i in dm.datasets[s].ids}
    assert report[f"truncated_texts/{split_of['s000']}"] >= 1
    assert build(long_text_layout(tmp_path / "long"), max_length=200).data_report == {}  # filled by setup


def test_the_data_report_is_logged_at_fit_and_test_start(tmp_path: Path) -> None:
    dm = build(long_text_layout(tmp_path), modalities=["text"], image_dir=None, max_length=24)
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=recorder,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=1,
        limit_val_batches=1,
    )
    model = TextClassifier(num_classes=2, modalities=dm.modality_specs, text_encoder=SMALL_TEXT)
    with pytest.warns(UserWarning, match="truncated"):
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    reports = [m for m in recorder.metrics if any(k.startswith("data/") for k in m)]
    assert len(reports) == 2  # once at fit start, once at test start
    fit, test = reports
    assert fit.keys() == {"data/truncated_texts/train", "data/truncated_texts/val"}
    assert test["data/truncated_texts/test"] == dm.data_report["truncated_texts/test"]
    assert sum(test[f"data/truncated_texts/{s}"] for s in ("train", "val", "test")) == 2


# ------------------------------------------------------------------------------------- encodings
def test_latin1_reports_json_names_the_file_and_the_fix(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    text = json.dumps({r["image_id"]: "caf\u00e9 au lait" for r in layout.rows}, ensure_ascii=False, indent=1)
    layout.json_path.write_bytes(text.encode("latin-1"))
    message = data_error(lambda: build(layout), str(layout.json_path), "is not UTF-8", "line 2", "0xe9", "UTF-8")
    assert "UnicodeDecodeError" not in message


def test_latin1_csv_names_the_file_and_the_fix(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    lines = layout.csv_path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace("face", "fa\u00e7ade")
    layout.csv_path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    data_error(lambda: build(layout), str(layout.csv_path), "is not UTF-8", "line 4", "0xe7", "re-save it as UTF-8")
    # A prediction CSV goes through the same reader.
    data_error(lambda: build(write_layout(tmp_path / "ok"), predict_csv=str(layout.csv_path)), "is not UTF-8")
