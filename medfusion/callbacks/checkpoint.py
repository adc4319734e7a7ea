"""The checkpoint callback of the medfusion configs (the best checkpoint by a metric, and ``last.ckpt`` after every
training epoch), and the in-memory best weights of runs that write no checkpoints."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


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


class BestWeights(Callback):
    """Keep the weights of the best epoch by ``monitor`` in memory, for runs whose checkpoints nobody reads (the
    cells of ``medfusion compare``): the same choice as ``ModelCheckpoint(monitor, mode, save_top_k=1)`` (a
    strictly better value replaces the kept one; NaN counts as the worst) without writing a file per epoch.
    :meth:`restore` loads them into the module before ``test``.
    """

    def __init__(self, monitor: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        if math.isnan(value):  # as ModelCheckpoint: the worst value, kept only while nothing else is
            value = -math.inf if self.mode == "max" else math.inf
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
            self.state = {k: v.detach().clone() for k, v in trained_state(pl_module).items()}

    def restore(self, pl_module: L.LightningModule) -> bool:
        """Load the kept weights into ``pl_module``; False when no epoch was ever validated."""
        if self.state is None:
            return False
        unexpected = pl_module.load_state_dict(self.state, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"BestWeights holds entries the module lacks: {unexpected}")
        return True


def trained_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``module.state_dict()`` training can change: parameters that require gradients and every
    buffer (frozen encoders' weights, most of a frozen model, are left out)."""
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k not in frozen}
