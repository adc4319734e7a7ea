"""Interrupted runs: a fit killed with SIGKILL mid-epoch and resumed with --ckpt_path last reaches the metrics of
an uninterrupted run; checkpoints are written atomically; the same config and seed give the same metrics."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import demo_run_overrides
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from medfusion.callbacks import ResumableCheckpoint
from medfusion.cli import main
from medfusion.runs.checkpoints import CheckpointError
from medfusion.runs.resume import SafeCheckpointIO, epoch_seed, seed_epoch

CONFIGS = Path(__file__).parents[1] / "configs"
TESTS = Path(__file__).parent


def fit_args(root: Path, data: Path, epochs: int = 2) -> list[str]:
    options = {"trainer__max_epochs": epochs, "evaluation__bootstrap_resamples": 100}
    overrides = demo_run_overrides(root, data_dir=data, runs_dir=root, evaluation__embedding_map="false", **options)
    return ["fit", f"--config={CONFIGS / 'demo.yaml'}", *overrides]


def cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "medfusion", *args],
        cwd=cwd,
        env={**env, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]


def test_sigkill_mid_epoch_then_resume_reaches_the_uninterrupted_metrics(tmp_path) -> None:
    data = tmp_path / "data"
    finish(cli(fit_args(tmp_path / "reference", data), tmp_path))
    reference = json.loads((tmp_path / "reference" / "demo" / "version_0" / "metrics.json").read_text())

    # 4 training steps per epoch: pause (and get killed) after step 6, in the middle of the second epoch
    marker = tmp_path / "paused"
    pause = [
        "--trainer.callbacks+=killpoint.PauseAt",
        "--trainer.callbacks.step=6",
        f"--trainer.callbacks.marker={marker}",
    ]
    process = cli([*fit_args(tmp_path / "killed", data), *pause], tmp_path)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the run never reached step 6"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    run = tmp_path / "killed" / "demo" / "version_0"
    assert not (run / "metrics.json").exists()  # it really died before finishing
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0

    finish(cli([*fit_args(tmp_path / "killed", data), "--ckpt_path=last"], tmp_path))
    assert not (tmp_path / "killed" / "demo" / "version_1").exists()  # resumed in place
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed == pytest.approx(reference, abs=1e-6)
    assert (run / "previous_attempts" / "1" / "config.yaml").is_file()  # the first attempt's files are kept
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_same_config_and_seed_give_identical_metrics(tmp_path) -> None:
    for name in ("first", "second"):
        main([*fit_args(tmp_path / name, tmp_path / "data", epochs=1)])
    first, second = (
        json.loads((tmp_path / n / "demo" / "version_0" / "metrics.json").read_text()) for n in ("first", "second")
    )
    assert first == second


def test_resume_last_without_a_previous_run_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"--ckpt_path last: no .*last\.ckpt to resume from"):
        main([*fit_args(tmp_path / "runs", tmp_path / "data", epochs=1), "--ckpt_path=last"])


def test_a_checkpoint_write_that_dies_leaves_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    def dies_halfway(obj, f, *args, **kwargs) -> None:
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_an_epoch_seed_depends_on_the_run_seed_and_the_epoch_only() -> None:
    assert epoch_seed(3, seed=0) == epoch_seed(3, seed=0) != epoch_seed(4, seed=0) != epoch_seed(3, seed=1)
    seed_epoch(2, seed=7)
    first = (random.random(), np.random.rand(), torch.rand(3))
    torch.rand(10), np.random.rand(4)  # whatever ran in between
    seed_epoch(2, seed=7)
    assert (random.random(), np.random.rand()) == first[:2]
    assert torch.equal(torch.rand(3), first[2])


class _FlatMetric(BoringModel):
    """Logs a validation metric that never improves after the first epoch."""

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0 if self.current_epoch == 0 else 0.0)
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("callback", [ModelCheckpoint, ResumableCheckpoint])
def test_last_checkpoint_is_written_after_every_epoch(tmp_path, callback, trainer_factory) -> None:
    checkpoint = callback(
        dirpath=tmp_path, monitor="val/score", mode="max", save_last=True, save_on_train_epoch_end=True
    )
    options = {"limit_train_batches": 2, "limit_val_batches": 1, "enable_checkpointing": True}
    trainer = trainer_factory(max_epochs=3, callbacks=[checkpoint], **options)
    trainer.fit(_FlatMetric())
    epoch = torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"]
    # Lightning's own keeps last.ckpt at the best epoch (0); ours at the last finished one, for --ckpt_path last
    assert epoch == (2 if callback is ResumableCheckpoint else 0)
    assert [p.name for p in tmp_path.glob("epoch=*.ckpt")] == ["epoch=0-step=2.ckpt"]  # the best, kept
