"""Logit adjustment for label imbalance (Menon et al., ICLR 2021): in the loss (registered as ``logit_adjusted``)
or post hoc (:func:`logit_adjust`), never both."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.losses.base import LOSSES, Reduction, _check_num_classes, _counts_tensor, _reduce


def _log_prior(class_counts: Sequence[int] | torch.Tensor | None, what: str) -> torch.Tensor:
    """``log(C * prior)``: the log prior relative to the uniform one (a constant shift, so argmax and
    softmax are unchanged, and a uniform prior gives exactly 0)."""
    counts = _counts_tensor(class_counts, what)
    return (counts.numel() * counts / counts.sum()).log().float()


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``logits - tau * log(prior)``; take the argmax.

    The prior is taken relative to uniform (``log(C * prior)``), so a uniform prior returns the logits unchanged.

    Use it on a model trained with a *plain* loss. Never apply it to a model trained with
    :class:`LogitAdjustedLoss` (that correction is already learnt) nor with a class-balanced sampler.
    """
    log_prior = _log_prior(class_counts, "logit_adjust").to(logits.device, logits.dtype)
    _check_num_classes(logits, log_prior, "class_counts")
    return logits - tau * log_prior


@LOSSES.register("logit_adjusted")
class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE on ``logits + tau * log(prior)``.

    ``prior`` is the training class frequency from ``class_counts`` (required). Predict with the *raw*
    logits: do not also apply :func:`logit_adjust`, and do not train with a class-balanced sampler —
    each is the same correction and stacking them over-corrects toward rare classes.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("log_prior", _log_prior(class_counts, "LogitAdjustedLoss"), persistent=False)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.log_prior.numel()}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        _check_num_classes(logits, self.log_prior, "class_counts")
        adjusted = logits.float() + self.tau * self.log_prior.to(logits.device)
        return _reduce(F.cross_entropy(adjusted, target, reduction="none"), reduction)
