"""Concatenation fusion, the baseline every other fusion is compared with."""

from __future__ import annotations

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion
from medfusion.fusion.checks import check_pooled


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Early fusion by concatenation (the standard baseline; Baltrušaitis et al., 2019 survey).

    ``h = Dropout(GELU(W [v; t] + b))``.
    """

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, *, dropout: float = 0.1) -> None:
        super().__init__(image_dim, text_dim, out_dim)
        self.proj = nn.Linear(image_dim + text_dim, out_dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fuse ``image`` [B, Di] and ``text`` [B, Dt] into [B, out_dim]."""
        check_pooled(image, text, self.image_dim, self.text_dim)
        return self.dropout(self.act(self.proj(torch.cat([image, text], dim=-1))))
