"""Guards against a diverged run: a non-finite training loss stops it at once, and non-finite weights are never
saved."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from medfusion.runs.checkpoints import non_finite_tensors


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or weights; the message names the step and the likely causes."""


def likely_causes(module: L.LightningModule) -> str:
    """The usual reasons for a diverged run, with this run's settings."""
    trainer = module._trainer
    precision = str(trainer.precision) if trainer is not None else "32-true"
    causes = [f"a learning rate too high (model.lr={module.hparams.get('lr')}: try 10x lower)"]
    if precision.startswith("16"):
        causes.append(f"float16 overflow (trainer.precision={precision}: try bf16-mixed or 32-true)")
    causes.append("non-finite values in the data")
    return f"Likely causes: {', '.join(causes[:-1])} or {causes[-1]}."


def check_loss(module: L.LightningModule, loss: torch.Tensor, batch: dict[str, Any]) -> None:
    """Raise :class:`DivergedError` when the training loss is NaN or infinite, before it reaches the weights.

    Under DDP the ranks agree first (one all-reduce), so that every rank stops together.
    """
    bad = not bool(torch.isfinite(loss.detach()).all())
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return
    ids = list(batch.get("id", []))[:5]
    raise DivergedError(
        f"The training loss is {float(loss.detach().float().mean())} at step {module.global_step} (epoch "
        f"{module.current_epoch}; batch ids {ids}...). Training stopped; no checkpoint is written from this point, "
        f"earlier ones are kept. {likely_causes(module)}"
    )


def check_weights(module: L.LightningModule, state_dict: dict[str, Any]) -> None:
    """Raise :class:`DivergedError` instead of saving a checkpoint whose weights hold NaN or infinity."""
    bad = non_finite_tensors(state_dict)
    if bad:
        raise DivergedError(
            f"{len(bad)} weight tensors hold NaN or infinity at step {module.global_step} (e.g. {', '.join(bad[:3])}); "
            f"the checkpoint is not written. {likely_causes(module)}"
        )
