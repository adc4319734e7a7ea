"""Ordinal heads for graded diagnoses: CORAL (Cao et al. 2020) and CORN (Shi et al. 2021).

Both keep the head contract (``[B, in_dim] -> [B, K]``): they return the *log-probabilities* of the K grades, so
softmax, temperature, test-time augmentation and every metric work on them as on logits (``softmax(log p) = p``).
The grades are the classes in ``class_names`` order. :func:`exceedance` gives the cumulative probabilities
``P(y > k)`` of any head's probabilities; the ordinal losses (:mod:`medfusion.losses.ordinal`) read the binary
tasks back from the log-probabilities, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.heads.base import HEADS, Head
from medfusion.heads.mlp import Activation, MLPHead, Norm

_MIN_GAP = 1e-4  # between consecutive CORAL thresholds, so that every grade keeps a positive probability


def exceedance(probs: torch.Tensor) -> torch.Tensor:
    """``P(y > k)`` for ``k = 0 .. K-2`` ``[B, K-1]`` from class probabilities ``[B, K]`` (the risk of grade
    ``k + 1`` or worse): the reversed cumulative sum, monotone non-increasing in ``k``."""
    return probs.flip(-1).cumsum(-1).flip(-1)[..., 1:].clamp(0.0, 1.0)


def is_ordinal(head: nn.Module) -> bool:
    """Whether ``head`` (or, for a head made of experts, one of them) is an ordinal head."""
    experts = getattr(head, "experts", None)
    inner = list(experts) if isinstance(experts, nn.ModuleList) else []
    return bool(getattr(head, "ordinal", False)) or any(is_ordinal(expert) for expert in inner)


def _check_grades(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"an ordinal head needs two grades or more, got num_classes={num_classes}")


@HEADS.register("coral")
class CORALHead(Head):
    """CORAL: one score ``g(x)`` (an MLP), K-1 thresholds, ``P(y > k) = sigmoid(g(x) + b_k)``.

    Rank consistency is built in: ``b_k = b_0 - sum_{j<=k} (softplus(d_j) + 1e-4)`` decreases strictly, so
    ``P(y > k)`` is non-increasing in ``k`` for every input (Cao et al. show the unconstrained biases end up
    ordered at the optimum; here no step of training can break it). Class log-probabilities are the differences
    of consecutive cumulative probabilities, computed in log space. :meth:`cumulative_logits` gives
    ``g(x) + b_k``.

    Args:
        in_dim: input features.
        num_classes: the number of grades K.
        hidden_dims: hidden sizes of the score MLP (``()``: a linear score, as in the paper).
        activation, norm, dropout: as in :class:`~medfusion.heads.MLPHead`.
    """

    ordinal = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (256,),
        activation: Activation = "gelu",
        norm: Norm = "layer",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, num_classes)
        _check_grades(num_classes)
        self.score = MLPHead(in_dim, 1, hidden_dims, activation, norm, dropout)
        nn.init.zeros_(self.score.net[-1].bias)  # the thresholds carry the offsets
        # thresholds ln 2 apart (softplus(0)), centred on 0
        self.first = nn.Parameter(torch.tensor(math.log(2) * (num_classes - 2) / 2))
        self.gaps = nn.Parameter(torch.zeros(num_classes - 2))

    def thresholds(self) -> torch.Tensor:
        """The K-1 biases ``b_k``, strictly decreasing."""
        steps = F.softplus(self.gaps) + _MIN_GAP
        return torch.cat([self.first.view(1), self.first - steps.cumsum(0)])

    def cumulative_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``logit P(y > k)`` ``[B, K-1]``: the shared score plus each threshold."""
        return self.score(x).float() + self.thresholds()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.cumulative_logits(x)
        above, below = F.logsigmoid(z), F.logsigmoid(-z)  # log P(y > k), log P(y <= k)
        # P(y = k) = P(y > k-1) - P(y > k) = sigmoid(z_{k-1}) sigmoid(-z_k) (1 - exp(z_k - z_{k-1}))
        middle = above[:, :-1] + below[:, 1:] + torch.log(-torch.expm1(z[:, 1:] - z[:, :-1]))
        return torch.cat([below[:, :1], middle, above[:, -1:]], dim=1)


@HEADS.register("corn")
class CORNHead(Head):
    """CORN: K-1 conditional binary tasks ``P(y > k | y > k-1) = sigmoid(f_k(x))`` from one MLP, so
    ``P(y > k) = prod_{j<=k} sigmoid(f_j)`` is non-increasing by construction and the tasks need no shared weight
    (more expressive than CORAL). Class log-probabilities: ``log P(y = k) = sum_{j<k} logsigmoid(f_j) +
    logsigmoid(-f_k)``. :meth:`conditional_logits` gives ``f``.

    Args:
        in_dim: input features.
        num_classes: the number of grades K.
        hidden_dims, activation, norm, dropout: as in :class:`~medfusion.heads.MLPHead`.
    """

    ordinal = True

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (256,),
        activation: Activation = "gelu",
        norm: Norm = "layer",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, num_classes)
        _check_grades(num_classes)
        self.tasks = MLPHead(in_dim, num_classes - 1, hidden_dims, activation, norm, dropout)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``logit P(y > k | y > k-1)`` ``[B, K-1]``."""
        return self.tasks(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conditional_logits(x)
        reached = F.pad(F.logsigmoid(f).cumsum(1), (1, 0))  # log P(y > k-1), k = 0 .. K-1
        stop = F.pad(F.logsigmoid(-f), (0, 1))  # log P(y = k | y > k-1); the last grade always stops
        return reached + stop
