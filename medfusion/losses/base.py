"""The loss contract, its registry and the helpers the loss families share.

Every classification loss is an ``nn.Module`` called as ``loss(logits [B, C], target long [B]) -> scalar``
(``reduction="none"`` gives per-sample terms [B] whose mean is that scalar, for per-sample weighting) and
takes ``class_counts`` (training-set count per class) as its *first* parameter, so a model can build
any configured loss as ``loss_cls(class_counts=counts)``; losses that do not need counts ignore them.
First, because jsonargparse treats the first parameter of a ``Callable[..., nn.Module]`` target as
supplied by the caller and hides it from the config.

Imbalance corrections must not be stacked (Menon et al. 2021): use *one* of class weights, focal
``alpha``, logit adjustment (in the loss *or* post hoc, never both) and a class-balanced sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from medfusion.registry import Registry

ClassWeighting = Literal["none", "inverse", "sqrt_inverse", "effective"]
Reduction = Literal["mean", "none"]

LOSSES: Registry[nn.Module] = Registry("loss")


def build_loss(name: str, class_counts: Sequence[int] | None = None, **hparams: Any) -> nn.Module:
    """Build a registered loss by name, e.g. ``build_loss("focal", class_counts=[90, 9, 1], gamma=2.0)``."""
    return LOSSES.build(name, class_counts=class_counts, **hparams)


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"Unknown reduction {reduction!r}; choose 'mean' or 'none'")


def _counts_tensor(class_counts: Sequence[int] | torch.Tensor | None, what: str) -> torch.Tensor:
    if class_counts is None:
        raise ValueError(
            f"{what} needs the training class counts: pass class_counts=[n_0, n_1, ...] "
            "(the medfusion models pass the datamodule's counts automatically)"
        )
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or (counts <= 0).any():
        empty = (counts <= 0).nonzero().flatten().tolist()
        raise ValueError(
            f"{what} needs a positive count for every class; classes {empty} have none in "
            f"class_counts={counts.long().tolist()}. Drop those classes or choose explicit weights."
        )
    return counts


def class_weights_from_counts(
    class_counts: Sequence[int] | torch.Tensor | None,
    scheme: Literal["inverse", "sqrt_inverse", "effective"],
    beta: float = 0.999,
) -> torch.Tensor:
    """Per-class weights normalised to mean 1: ``1/n``, ``1/sqrt(n)`` or the effective number of samples
    ``(1 - beta) / (1 - beta^n)`` (Cui et al., CVPR 2019)."""
    counts = _counts_tensor(class_counts, f"class weighting {scheme!r}")
    if scheme == "inverse":
        weights = 1.0 / counts
    elif scheme == "sqrt_inverse":
        weights = counts.rsqrt()
    elif scheme == "effective":
        weights = (1.0 - beta) / (1.0 - beta**counts)
    else:
        raise ValueError(f"Unknown class weighting {scheme!r}; choose none, inverse, sqrt_inverse or effective")
    return (weights / weights.mean()).float()


def _check_num_classes(logits: torch.Tensor, per_class: torch.Tensor | None, name: str) -> None:
    if per_class is not None and per_class.numel() != logits.shape[-1]:
        raise ValueError(f"{name} has {per_class.numel()} classes but the logits have {logits.shape[-1]}")
