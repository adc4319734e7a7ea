"""The CLI and checkpoint guarantees that need no trained model: input errors printed as themselves (exit 2),
option checks before any run directory exists, refused checkpoints (remote, damaged, pickled code, non-finite),
stale checkpoint temporaries removed, demo-data never overwriting, and predictions keeping every requested row."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from data_helpers import sample_rows, write_layout

from medfusion.callbacks import PredictionWriter
from medfusion.cli import console, main, message_of, own_best_checkpoint
from medfusion.data import ConfigError, DataError
from medfusion.runs.checkpoints import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_finite,
    load_safely,
    read_checkpoint,
)
from medfusion.runs.resume import SafeCheckpointIO

REPO = Path(__file__).parents[1]


class Evil:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": Evil(marker)}, path)
    return path


def fit_args(layout, runs: Path, *extra: str) -> list[str]:
    """A text-only fit on the small test layout (no image model to build), into ``runs``."""
    return [
        "fit",
        "--model=medfusion.models.TextClassifier",
        "--model.text_encoder.model_name=tiny",
        "--data=medfusion.data.MultimodalDataModule",
        f"--data.csv_path={layout.csv_path}",
        f"--data.text_json={layout.json_path}",
        "--data.modalities=[text]",
        "--data.batch_size=4",
        "--trainer.max_epochs=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={runs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


@pytest.fixture
def loopback(tmp_path: Path):
    """A bounded HTTP server on 127.0.0.1 serving ``tmp_path/served``; yields (base URL, request paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests, served
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------ errors reach the user as themselves
def test_a_missing_image_is_printed_as_itself_with_exit_status_2(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    missing = next(layout.image_dir.iterdir())
    missing.unlink()
    args = [a.replace("TextClassifier", "MultimodalClassifier") for a in fit_args(layout, tmp_path / "runs")]
    args = [a for a in args if "modalities" not in a] + [f"--data.image_dir={layout.image_dir}"]
    args += ["--model.image_encoder.model_name=test_resnet", "--data.image_size=16"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MEDFUSION_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "medfusion", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-3:]
    assert last[0].startswith("Missing image files in ") and str(layout.csv_path) in last[0], last
    assert last[1].startswith("  line ") and f"no file for '{missing.stem}'" in last[1], last
    assert last[2].startswith("Fix: "), last
    for noise in ("Traceback", "jsonargparse", "Union subtypes", "Namespace("):
        assert noise not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback_instead(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text("{not json")
    with pytest.raises(DataError, match=r"Malformed JSON in .*samples\.json at line 1"):
        console(["--debug", *fit_args(layout, tmp_path / "runs")])


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [
        ("--data.batch_size", "0", "data.batch_size"),
        ("--data.max_length", "0", "data.max_length"),
        ("--model.lr", "0", "model.lr"),
        ("--model.lr", "-1e-3", "model.lr"),
    ],
)
def test_bad_option_values_are_refused_before_any_run_directory(tmp_path: Path, capsys, option, value, name) -> None:
    layout = write_layout(tmp_path)
    with pytest.raises(SystemExit) as info:
        console(fit_args(layout, tmp_path / "runs", f"{option}={value}"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"{name}=") and " is invalid: it must be " in err and f"Fix: set --{name}" in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_test_after_fit_without_test_rows_fails_before_training(tmp_path: Path) -> None:
    rows = [{**row, "split": "train" if i < 16 else "val"} for i, row in enumerate(sample_rows())]
    layout = write_layout(tmp_path, rows)
    args = fit_args(layout, tmp_path / "runs", "--data.split_column=split", "--test_after_fit=true")
    with pytest.raises(ConfigError, match=r"test_after_fit is set, but the data has no test rows.*Fix: "):
        main(args)
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # refused before the first epoch


def test_a_worker_traceback_is_cut_from_the_message() -> None:
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File x\n"
        "medfusion.data.errors.DataError: Unreadable image file in a.csv (1 row(s)):\n  line 3: a.png\nFix: replace it"
    )
    assert message_of(wrapped) == "Unreadable image file in a.csv (1 row(s)):\n  line 3: a.png\nFix: replace it"


# ------------------------------------------------------------------------------ checkpoints
def test_a_remote_checkpoint_is_refused_without_a_request(tmp_path: Path, loopback) -> None:
    base, requests, served = loopback
    marker = tmp_path / "pwned"
    evil_checkpoint(served / "evil.ckpt", marker)
    layout = write_layout(tmp_path)
    with pytest.raises(CheckpointError, match=r"Refusing the remote checkpoint .*evil\.ckpt.*--allow_remote_ckpt"):
        main(fit_args(layout, tmp_path / "runs", f"--ckpt_path={base}/evil.ckpt"))
    assert requests == [] and not marker.exists() and not (tmp_path / "runs").exists()


def test_an_allowed_remote_checkpoint_is_still_loaded_weights_only(tmp_path: Path, loopback, monkeypatch) -> None:
    base, requests, served = loopback
    monkeypatch.setenv("MEDFUSION_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    evil_checkpoint(served / "evil.ckpt", marker)
    layout = write_layout(tmp_path)
    args = fit_args(layout, tmp_path / "runs", f"--ckpt_path={base}/evil.ckpt", "--allow_remote_ckpt=true")
    args[0] = "test"
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors.*could run code"):
        main(args)
    assert requests == ["/evil.ckpt"]  # downloaded once, then refused
    assert not marker.exists()


def test_damaged_and_foreign_files_are_checkpoint_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 0, "medfusion": {"format": CHECKPOINT_FORMAT}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch: 3\n")
    plain = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(2), plain)
    for path, match in (
        (truncated, "cannot be read as a checkpoint"),
        (text, "cannot be read as a checkpoint"),
        (plain, "is not a Lightning checkpoint"),
        (tmp_path / "absent.ckpt", "not found"),
    ):
        with pytest.raises(CheckpointError, match=match) as info:
            read_checkpoint(path)
        assert str(path) in str(info.value)
    assert read_checkpoint(good)["epoch"] == 0


def test_a_checkpoint_of_another_format_is_refused_naming_both_versions(tmp_path: Path) -> None:
    for name, medfusion in (
        ("old.ckpt", {"class_names": ["a", "b"]}),
        ("newer.ckpt", {"format": CHECKPOINT_FORMAT + 1}),
    ):
        torch.save({"state_dict": {"w": torch.ones(3)}, "medfusion": medfusion}, tmp_path / name)
        found = medfusion.get("format", 1)
        expected = rf"{name} was written in medfusion checkpoint format {found}; this medfusion reads format "
        for read in (read_checkpoint, SafeCheckpointIO().load_checkpoint):
            with pytest.raises(CheckpointError, match=expected + str(CHECKPOINT_FORMAT)):
                read(tmp_path / name)


def test_pickled_code_in_a_local_checkpoint_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="could run code"):
        load_safely(path)
    with pytest.raises(CheckpointError, match="could run code"):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_non_finite_weights_are_refused_naming_the_tensors() -> None:
    state = {"a.weight": torch.ones(2), "b.weight": torch.tensor([1.0, float("nan")]), "steps": torch.tensor(3)}
    with pytest.raises(CheckpointError, match=r"x\.ckpt: 1 of 3 weight tensors hold NaN .*b\.weight.*diverged"):
        check_finite(state, "x.ckpt")
    check_finite({"a.weight": torch.ones(2)}, "fine.ckpt")


def test_stale_checkpoint_temporaries_are_removed_on_the_next_save(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.ckpt.{dead.pid}.tmp"
    stale.write_bytes(b"PK partial")
    mine = tmp_path / f".best.ckpt.{os.getpid()}.tmp"  # a write of this very process: kept
    mine.write_bytes(b"PK")
    SafeCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert not stale.exists() and mine.exists() and (tmp_path / "last.ckpt").is_file()


def test_only_the_runs_own_best_checkpoint_is_tested(tmp_path: Path) -> None:
    own, other = tmp_path / "run" / "checkpoints", tmp_path / "other" / "checkpoints"
    own.mkdir(parents=True)
    other.mkdir(parents=True)
    (own / "best.ckpt").write_bytes(b"x")
    (other / "best.ckpt").write_bytes(b"x")

    def trainer(best: Path | str) -> SimpleNamespace:
        return SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_path=str(best), dirpath=str(own)))

    assert own_best_checkpoint(trainer(own / "best.ckpt")) == str(own / "best.ckpt")
    assert own_best_checkpoint(trainer(other / "best.ckpt")) is None  # restored from another run's state
    assert own_best_checkpoint(trainer(own / "deleted.ckpt")) is None
    assert own_best_checkpoint(trainer("")) is None


# ------------------------------------------------------------------------------ predictions
def test_the_prediction_writer_keeps_every_requested_id_once(tmp_path: Path) -> None:
    writer = PredictionWriter(str(tmp_path / "predictions.csv"))
    dataset = SimpleNamespace(ids=["a", "b", "c", "d"])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(datasets={"predict": dataset}), is_global_zero=True)
    batches = [
        {"id": ["b", "a"], "probs": torch.tensor([[0.2, 0.8], [0.9, 0.1]]), "error": [None, None]},
        {"id": ["c", "b"], "probs": torch.tensor([[float("nan"), 0.5], [0.2, 0.8]]), "error": [None, None]},
    ]
    writer.write_on_epoch_end(trainer, SimpleNamespace(class_names=["neg", "pos"]), batches, None)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert list(rows[0]) == ["id", "prediction", "prob_neg", "prob_pos", "status", "error"]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]  # the requested order, each once
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert rows[0]["prediction"] == "neg" and rows[1]["prediction"] == "pos"
    assert rows[2]["prob_neg"] == rows[2]["prediction"] == "" and "not finite" in rows[2]["error"]
    assert "never came back" in rows[3]["error"]
    assert not any(r[k] == "nan" for r in rows for k in r)
    assert writer.summary == (4, 2, tmp_path / "predictions.csv")


# ------------------------------------------------------------------------------ demo-data
def test_demo_data_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metadata.csv").write_text("my,own\n1,2\n")
    with pytest.raises(ConfigError, match=r"mine is not empty \(metadata\.csv\).*--overwrite"):
        main(["demo-data", str(out), "--num_samples=12", "--image_size=16"])
    assert (out / "metadata.csv").read_text() == "my,own\n1,2\n"
    main(["demo-data", str(out), "--num_samples=12", "--image_size=16", "--overwrite"])
    assert (out / "metadata.csv").read_text().startswith("image_id,label")
