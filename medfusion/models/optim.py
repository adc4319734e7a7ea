"""The optimizer and learning-rate schedule of the medfusion classifiers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import nn


def adamw(
    model: nn.Module, encoder_params: Sequence[nn.Parameter], *, encoder_lr: float, lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with ``encoder_lr`` for ``encoder_params`` and ``lr`` for the model's other trainable parameters;
    ``weight_decay`` on matrices only (biases and norm weights get none)."""
    in_encoder = {id(p) for p in encoder_params}
    groups = []
    for encoders, group_lr in ((True, encoder_lr), (False, lr)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in in_encoder) == encoders]
        groups += [
            {"params": [p for p in params if p.ndim > 1], "lr": group_lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "lr": group_lr, "weight_decay": 0.0},
        ]
    # foreach: one fused kernel per group also on the CPU (PyTorch picks it by default only on GPUs), the same
    # update as the per-tensor loop, without a Python iteration per parameter
    return torch.optim.AdamW([g for g in groups if g["params"]], foreach=True)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, trainer: L.Trainer, warmup_ratio: float) -> dict[str, Any]:
    """Lightning's scheduler config of a per-step :func:`warmup_cosine` over the fit's optimizer steps, the first
    ``warmup_ratio`` of them warming up."""
    total = max(1, stepping_batches(trainer))
    factor = partial(warmup_cosine, warmup=max(1, int(warmup_ratio * total)), total=total)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def stepping_batches(trainer: L.Trainer) -> int:
    """The optimizer steps of the whole fit, as ``Trainer.estimated_stepping_batches`` counts them, but from the
    training loader's length alone: Lightning's estimate starts iterating the loader before a checkpoint's loader
    state is restored, which would replay the wrong epoch after ``--ckpt_path`` (see ``EpochSeededLoader``)."""
    if trainer.max_steps > 0:
        return trainer.max_steps
    datamodule = trainer.datamodule
    if datamodule is None or trainer.max_epochs is None or trainer.max_epochs < 0:
        return int(trainer.estimated_stepping_batches)
    batches = len(datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
    return math.ceil(batches / trainer.accumulate_grad_batches) * trainer.max_epochs
