"""The head contract and its registry: ``logits = head(x)`` with ``x`` [B, in_dim]."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medfusion.registry import Registry


class Head(nn.Module):
    """Base class of classification heads: maps ``[B, in_dim]`` to logits ``[B, num_classes]``.

    The hook that logging and ``medfusion explain`` read is declared here: :meth:`routing`.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary training losses of the last forward (e.g. MoE balance); none by default."""
        return {}

    def routing(self) -> dict[str, torch.Tensor]:
        """Detached routing statistics of the last forward of heads that route samples (MoE): ``load`` and
        ``importance`` [K], ``combine`` [B, K]; empty for the others."""
        return {}


HEADS: Registry[Head] = Registry("head")


def build_head(name: str, *, in_dim: int, num_classes: int, **hparams: Any) -> Head:
    """Build a registered head by name, e.g. ``build_head("mlp", in_dim=256, num_classes=7)``."""
    return HEADS.build(name, in_dim=in_dim, num_classes=num_classes, **hparams)
