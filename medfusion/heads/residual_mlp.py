"""Residual MLP head: pre-norm residual feed-forward blocks (as in Transformer FFNs / ResMLP)."""

from __future__ import annotations

import torch
from torch import nn

from medfusion.heads.base import HEADS, Head


class ResidualBlock(nn.Module):
    """Pre-norm residual feed-forward block: ``y = x + f(LN(x))``, ``f = Linear-GELU-Dropout-Linear``."""

    def __init__(self, dim: int, expansion: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, expansion * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(expansion * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


@HEADS.register("residual_mlp")
class ResidualMLPHead(Head):
    """Input projection to ``hidden_dim``, ``num_blocks`` pre-norm residual blocks, final LayerNorm + Linear.

    The identity paths keep gradients well conditioned, so the head can be deeper than a plain MLP.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_blocks: int = 2,
        expansion: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, num_classes)
        self.proj = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.Sequential(*(ResidualBlock(hidden_dim, expansion, dropout) for _ in range(num_blocks)))
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.blocks(self.proj(x))))
