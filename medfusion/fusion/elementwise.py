"""Element-wise fusions: both modalities projected to ``out_dim`` and normalised, then summed or multiplied."""

from __future__ import annotations

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion
from medfusion.fusion.checks import check_pooled


class ElementwiseFusion(Fusion):
    """Shared body of ``add`` and ``mul``: ``h = Dropout(LN(W_v v) ∘ LN(W_t t))`` with ``∘`` set by :meth:`combine`.

    The LayerNorms put both modalities on one scale, which the Hadamard product would otherwise amplify.
    """

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, *, dropout: float = 0.1) -> None:
        super().__init__(image_dim, text_dim, out_dim)
        self.image_proj = nn.Sequential(nn.Linear(image_dim, out_dim), nn.LayerNorm(out_dim))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, out_dim), nn.LayerNorm(out_dim))
        self.dropout = nn.Dropout(dropout)

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Combine the two projected [B, out_dim] tensors."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fuse ``image`` [B, Di] and ``text`` [B, Dt] into [B, out_dim]."""
        check_pooled(image, text, self.image_dim, self.text_dim)
        return self.dropout(self.combine(self.image_proj(image), self.text_proj(text)))


@FUSIONS.register("add")
class AddFusion(ElementwiseFusion):
    """Additive fusion (Baltrušaitis et al., 2019 survey): ``h = LN(W_v v) + LN(W_t t)``.

    Additive in the inputs, so interactions between the modalities are left to a non-linear head.
    """

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image + text


@FUSIONS.register("mul")
class MulFusion(ElementwiseFusion):
    """Multiplicative (Hadamard) fusion, the VQA baseline (Antol et al., 2015): ``h = LN(W_v v) ⊙ LN(W_t t)``."""

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image * text
