"""Test helper loaded by a CLI subprocess: pause training at a given step so that the test can SIGKILL it there."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class PauseAt(Callback):
    """After training step ``step``, touch ``marker`` and sleep (the test kills the process meanwhile)."""

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(self.seconds)


class FailAt(Callback):
    """After training step ``step``, raise: a run that dies there, in process (its last checkpoint stays)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step} (test)")
