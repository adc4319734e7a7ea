"""Ordinal losses for graded classes (registered as ``coral`` and ``corn``), on any head's logits.

Both read the grade distribution ``log_softmax(logits)`` (the log-probabilities an ordinal head returns, or any
head's) and score the binary tasks of the ordinal methods from it, in log space:

- ``coral`` (Cao et al. 2020): the K-1 tasks ``y > k``, binary cross-entropy on ``P(y > k)``, summed over the tasks
  (optionally weighted) and averaged over the batch. On a :class:`~medfusion.heads.CORALHead` it is the paper's
  loss on ``sigmoid(g(x) + b_k)``.
- ``corn`` (Shi et al. 2021): task ``k`` on the samples with ``y > k-1`` only, binary cross-entropy on
  ``P(y > k | y > k-1)``, summed over every (sample, task) pair and divided by their number. On a
  :class:`~medfusion.heads.CORNHead` it is the paper's loss on ``sigmoid(f_k(x))``. By the chain rule a sample's
  terms add up to ``-log P(y)``: CORN's gain over cross-entropy comes from the head's parametrisation, not from
  the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.losses.base import LOSSES, Reduction, _reduce


def _tails(log_probs: torch.Tensor) -> torch.Tensor:
    """``log P(y >= k)`` for ``k = 0 .. K-1`` ``[B, K]``."""
    return log_probs.flip(-1).logcumsumexp(-1).flip(-1)


def _check_targets(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if logits.shape[-1] < 2:
        raise ValueError(f"{name} needs two grades or more, got logits of shape {tuple(logits.shape)}")


@LOSSES.register("coral")
class CoralLoss(nn.Module):
    """Cumulative binary cross-entropy of CORAL: ``-sum_k w_k [y > k] log P(y > k) + [y <= k] log P(y <= k)``.

    Args:
        class_counts: unused (the loss contract's first parameter).
        task_weights: ``w_k`` per task ``y > k`` (K-1 values); default 1 each.
    """

    ordinal = True

    def __init__(self, class_counts: Sequence[int] | None = None, task_weights: list[float] | None = None) -> None:
        super().__init__()
        weights = None if task_weights is None else torch.as_tensor(task_weights, dtype=torch.float32)
        self.register_buffer("task_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        _check_targets(logits, target, "CoralLoss")
        log_probs = F.log_softmax(logits.float(), -1)
        above = _tails(log_probs)[:, 1:]  # log P(y > k)
        at_most = log_probs.logcumsumexp(-1)[:, :-1]  # log P(y <= k)
        tasks = torch.arange(logits.shape[-1] - 1, device=logits.device)
        terms = -torch.where(target[:, None] > tasks, above, at_most)
        if self.task_weights is not None:
            if self.task_weights.numel() != terms.shape[1]:
                raise ValueError(f"task_weights has {self.task_weights.numel()} values for {terms.shape[1]} tasks")
            terms = terms * self.task_weights.to(terms.device)
        return _reduce(terms.sum(1), reduction)


@LOSSES.register("corn")
class CornLoss(nn.Module):
    """Conditional binary cross-entropy of CORN, normalised by the number of (sample, task) pairs used.

    ``reduction="none"`` gives per-sample terms rescaled by ``B / pairs``, so that their mean is the loss.

    Args:
        class_counts: unused (the loss contract's first parameter).
    """

    ordinal = True

    def __init__(self, class_counts: Sequence[int] | None = None) -> None:
        super().__init__()

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        _check_targets(logits, target, "CornLoss")
        log_probs = F.log_softmax(logits.float(), -1)
        tails = _tails(log_probs)
        go_on = tails[:, 1:] - tails[:, :-1]  # log P(y > k | y >= k)
        stop = log_probs[:, :-1] - tails[:, :-1]  # log P(y = k | y >= k)
        tasks = torch.arange(logits.shape[-1] - 1, device=logits.device)
        used = target[:, None] >= tasks
        terms = torch.where(used, -torch.where(target[:, None] > tasks, go_on, stop), 0.0)
        pairs = used.sum().clamp(min=1)
        return _reduce(terms.sum(1) * (len(target) / pairs), reduction)
