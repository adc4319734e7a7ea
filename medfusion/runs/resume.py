"""Surviving interruptions: safe, atomic checkpoint reads and writes, per-epoch seeds, and resuming a run in its
own directory."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import Namespace
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from medfusion.runs.checkpoints import CheckpointError, is_remote, read_checkpoint

RUN_FILES = ("metrics.csv", "config.yaml", "hparams.yaml", "metrics.json")


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO made safe both ways.

    Loading: local files only, ``weights_only=True`` (no code in a file runs), of this medfusion checkpoint format,
    and a :class:`CheckpointError` naming the file for anything unreadable (see
    :func:`~medfusion.runs.checkpoints.load_safely`). Saving: ``torch.save`` to a
    temporary file in the same directory, ``fsync``, then ``os.replace``, so a process killed while saving leaves the
    previous checkpoint intact, never a truncated one; the temporary files of such killed processes are removed
    the next time a checkpoint is saved in that directory. Remote save paths use Lightning's own writer.
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[Path] = set()

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location if map_location is not None else "cpu")

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in self._swept:
            remove_stale_temporaries(path.parent)
            self._swept.add(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete ``.<name>.ckpt.<pid>.tmp`` files left in ``directory`` by checkpoint writes whose process died."""
    removed = []
    for tmp in directory.glob(".*.ckpt.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        rank_zero_info(f"Removed {len(removed)} partial checkpoint file(s) of interrupted writes in {directory}")
    return removed


def epoch_seed(epoch: int, seed: int | None = None) -> int:
    """The seed of a training epoch: a function of the run's seed (``seed_everything``) and the epoch only."""
    base = int(os.environ.get("PL_GLOBAL_SEED", "0")) if seed is None else seed
    return (base * 1_000_003 + epoch) % 2**32


def seed_epoch(epoch: int, seed: int | None = None) -> int:
    """Seed Python, NumPy and torch (all devices) for ``epoch``; returns the seed. Called where the training
    loader is built, before its workers, sampler or first batch draw anything."""
    value = epoch_seed(epoch, seed)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value


def _run_logger(config: Namespace) -> Namespace | None:
    """The first configured logger with a ``save_dir``/``name``/``version`` layout (CSV, TensorBoard)."""
    loggers = config.trainer.logger
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = getattr(logger, "init_args", None)
        has_layout = init is not None and all(key in init for key in ("save_dir", "name", "version"))
        if isinstance(logger, Namespace) and has_layout:
            return logger
    return None


def _version_number(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def resolve_resume(config: Namespace) -> Path | None:
    """Prepare ``fit --ckpt_path`` to continue a run in its own directory.

    ``--ckpt_path last`` becomes the ``last.ckpt`` of the newest run under the logger's ``save_dir/name``. When
    the checkpoint lies in ``<save_dir>/<name>/<version>/checkpoints/``, the logger is pointed at that version
    (so checkpoints, best-model tracking and logs continue there) and the previous attempt's log files are
    moved to ``previous_attempts/<k>/`` (a logger would otherwise delete them). Returns that run directory.
    """
    ckpt = config.get("ckpt_path")
    logger = _run_logger(config)
    if not ckpt or logger is None:
        return None
    base = Path(logger.init_args.save_dir) / (logger.init_args.name or "")
    if ckpt == "last":
        runs = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: _version_number(p.parents[1]))
        if not runs:
            raise CheckpointError(
                f"--ckpt_path last: no {base}/*/checkpoints/last.ckpt to resume from; pass the checkpoint's path "
                "or train without --ckpt_path (ModelCheckpoint needs save_last: true)"
            )
        config.ckpt_path = str(runs[-1])
    ckpt_path = Path(config.ckpt_path)
    run_dir = ckpt_path.parent.parent
    if ckpt_path.parent.name != "checkpoints" or run_dir.parent.resolve() != base.resolve():
        return None  # a checkpoint from elsewhere: fine-tune/resume into a new run directory
    version = _version_number(run_dir)
    logger.init_args.version = version if version >= 0 else run_dir.name
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return run_dir  # DDP workers re-run the CLI: only the launching process moves files
    attempts = run_dir / "previous_attempts"
    archive = attempts / str(len(list(attempts.glob("*"))) + 1 if attempts.is_dir() else 1)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            archive.mkdir(parents=True, exist_ok=True)
            (run_dir / name).rename(archive / name)
    rank_zero_info(f"Resuming {run_dir} from {ckpt_path.name}; earlier log files kept in {archive}")
    return run_dir
