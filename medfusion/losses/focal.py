"""Focal loss (registered as ``focal``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.losses.base import LOSSES, Reduction, _check_num_classes, _reduce, class_weights_from_counts


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., ICCV 2017), averaged over the batch.

    Computed from ``log_softmax`` for stability; ``gamma=0, alpha=None`` is exactly cross-entropy.
    ``alpha``: ``None``; a float (one factor for every class — the binary RetinaNet ``alpha``/``1-alpha``
    split has no multi-class analogue); a per-class list; or ``"inverse"`` (inverse class frequency from
    ``class_counts``, mean 1). Unlike weighted CE, the mean is over samples, not over weights.
    Do not combine ``alpha`` with a class-balanced sampler (double correction).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | None = None,
        gamma: float = 2.0,
        alpha: float | list[float] | Literal["inverse"] | None = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        if alpha == "inverse":
            alpha_t = class_weights_from_counts(class_counts, "inverse")
        elif isinstance(alpha, str):
            raise ValueError(f"Unknown alpha {alpha!r}; use None, a float, a per-class list or 'inverse'")
        else:
            alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", alpha_t, persistent=False)

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else [round(a, 4) for a in self.alpha.flatten().tolist()]
        return f"gamma={self.gamma}, alpha={alpha}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        loss = -log_p
        if self.gamma != 0:
            # 1 - p_t via expm1 is accurate near p_t = 1; the floor keeps d/dp of x^gamma finite for gamma < 1.
            one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
            loss = one_minus_p**self.gamma * loss
        if self.alpha is not None:
            if self.alpha.ndim == 0:
                loss = self.alpha.to(loss.device) * loss
            else:
                _check_num_classes(logits, self.alpha, "alpha")
                loss = self.alpha.to(loss.device)[target] * loss
        return _reduce(loss, reduction)
