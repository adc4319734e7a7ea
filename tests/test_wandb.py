"""W&B offline: fit + test through the CLI with configs/logger/wandb.yaml, then read the local run files back."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from conftest import demo_run_overrides

from medfusion.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
pytestmark = pytest.mark.slow

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 7-byte header, then 32 KiB blocks of framed records
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_and_config(run_file: Path) -> tuple[dict[str, object], dict[str, object], str]:
    """Every history key with its last value, the run config, and the run's display name."""
    history: dict[str, object] = {}
    config: dict[str, object] = {}
    name = ""
    for record in read_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            name = record.run.display_name
    return history, config, name


def wait_for_exit_record(run_file: Path, timeout_s: float = 120.0) -> None:
    """Wait until W&B's writer has written the run's last record (``exit``): ``wandb.finish()`` can return before
    the offline file is complete on a loaded machine (seen on CI: a file without its run name or config yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(run_file)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return
        assert time.monotonic() < deadline, f"{run_file} has no exit record after {timeout_s} s"
        time.sleep(0.5)


def table(files: Path, key: str) -> dict:
    """The last logged version of the W&B table ``key`` (``media/table/<key>_<step>_<hash>.table.json``)."""
    found = sorted((files / "media" / "table").glob(f"{key}_*.table.json"), key=lambda p: int(p.name.split("_")[-2]))
    assert found, f"no table {key} in {files / 'media' / 'table'}"
    return json.loads(found[-1].read_text())


def test_fit_and_test_log_metrics_tables_and_confusion_matrix_offline(tmp_path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # the fragment's save_dir "runs" is relative
    main(
        [
            "fit",
            f"--config={CONFIGS / 'demo.yaml'}",
            f"--config={CONFIGS / 'logger' / 'wandb.yaml'}",
            *demo_run_overrides(tmp_path, num_samples=120, set_runs_dir=False),  # the fragment's runs/
            "--trainer.max_epochs=1",
            "--trainer.log_every_n_steps=2",
            "--val_predictions.num_samples=6",
            "--evaluation.bootstrap_resamples=200",
        ]
    )
    wandb.finish()

    (run_file,) = (tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    files = run_file.parent / "files"
    wait_for_exit_record(run_file)
    history, config, name = history_and_config(run_file)
    assert name == "multimodal-concat-mlp-ce-s0"
    # hyperparameters: the whole CLI config, flattened
    assert config["model.init_args.lr"] == 0.001 and config["data.init_args.batch_size"] == 16
    # metrics of fit and test, with the test's intervals and calibration error
    for key in ("train/loss", "val/macro_f1", "test/macro_f1", "test/ece", "test/macro_f1_ci_low"):
        assert key in history, f"{key} not logged; logged: {sorted(history)}"
    assert history["test/macro_f1_ci_low"] <= history["test/macro_f1"] <= history["test/macro_f1_ci_high"]
    # per-class precision/recall/F1
    per_class = table(files, "test/per_class")
    assert per_class["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in per_class["data"]][:6] == ["akiec", "bcc", "bkl", "df", "mel", "nv"]
    num_test = sum(row[4] for row in per_class["data"][:6])
    assert num_test == 20  # the demo's 15 % test split of 120 samples
    # the confusion matrix: W&B's plot (a table of true/predicted counts) and the PNG
    counts = table(files, "test/confusion_matrix_plot_table")
    assert counts["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(row[2] for row in counts["data"]) == num_test  # every test sample once
    assert list((files / "media" / "images" / "test").glob("confusion_matrix_*.png"))
    # the validation predictions table: image, text, true, predicted, probabilities
    predictions = table(files, "val/predictions")
    assert predictions["columns"][:5] == ["id", "image", "text", "true", "predicted"]
    assert len(predictions["data"]) == 6
    assert {row[3] for row in predictions["data"]} == {"akiec", "bcc", "bkl", "df", "mel", "nv"}  # one per class
    for row in predictions["data"]:
        assert isinstance(row[2], str) and row[2]
        assert sum(row[5:]) == pytest.approx(1.0, abs=1e-3)
    # other loggers keep working: the CSV run dir has its metrics and evaluation files
    run_dir = tmp_path / "runs" / "demo" / "version_0"
    assert "test/macro_f1" in json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "evaluation" / "test_confusion_matrix.csv").is_file()
