"""Concatenation fusion, the baseline every other fusion is compared with."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, fill_absent
from medfusion.fusion.checks import Inputs, Masks


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Early fusion by concatenation (the standard baseline; Baltrušaitis et al., 2019 survey).

    ``h = Dropout(GELU(W [x_1; …; x_N] + b))`` over the inputs in ``names`` order. An absent input's block is
    zeroed before ``W``, so its columns of ``W`` contribute nothing: it has no influence on ``h``.
    """

    def __init__(
        self,
        dims: Mapping[str, int] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: int | None = None,
        text_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        self.proj = nn.Linear(sum(self.dims.values()), self.out_dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        """``[B, Σ D_i]`` -> ``[B, out_dim]``; ``masked_fill``, not a product, so NaN in an absent row stays out."""
        blocks = [fill_absent(inputs[name], masks[name]) for name in self.names]
        return self.dropout(self.act(self.proj(torch.cat(blocks, dim=-1))))
