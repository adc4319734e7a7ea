"""The checkpoint callback of the medfusion configs: the best checkpoint by a metric, and ``last.ckpt`` after every
training epoch."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` (``save_last: true``) is written at the end of every
    training epoch, as ``--ckpt_path last`` needs to resume from the last finished epoch.

    Lightning (2.6) writes ``last.ckpt`` only in a step in which a top-k checkpoint was saved too, so with a
    monitored metric that stops improving it stays at the best epoch, and a resumed run would repeat every epoch
    after it. Every other option is ``ModelCheckpoint``'s.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)
            and self._should_save_on_train_epoch_end(trainer)
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
