"""Bilinear fusions: low-rank bilinear pooling (MLB / MFB) and the full outer-product tensor fusion (TFN)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion
from medfusion.fusion.checks import check_pooled


def signed_sqrt(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Power normalisation ``sign(x)·(√(|x|+ε) − √ε)``: continuous, 0 at 0, with a gradient bounded by 1/(2√ε)
    (the plain ``sign(x)·√|x|`` of MFB has an infinite gradient at 0)."""
    return torch.sign(x) * (torch.sqrt(x.abs() + eps) - eps**0.5)


@FUSIONS.register("bilinear")
class BilinearFusion(Fusion):
    """Low-rank bilinear pooling: MLB (Kim et al., 2017) with ``pool_factor=1``, MFB (Yu et al., 2017) with k > 1.

    ``z = SumPool_k(Uᵀ LN(v) ⊙ Vᵀ LN(t))`` at ``rank·k`` dims pooled over ``k`` consecutive dims, then
    ``h = W · L2(signed_sqrt(z))``. The full outer product is :class:`TensorFusion` (``"tensor"``).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        out_dim: int,
        *,
        rank: int = 256,
        pool_factor: int = 1,
        dropout: float = 0.1,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(image_dim, text_dim, out_dim)
        if rank < 1 or pool_factor < 1:
            raise ValueError(f"rank and pool_factor must be >= 1, got rank={rank}, pool_factor={pool_factor}")
        self.rank = rank
        self.pool_factor = pool_factor
        self.eps = eps
        # Normalised inputs keep the Hadamard product on a sane scale (it multiplies the two scales).
        self.image_norm = nn.LayerNorm(image_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.image_factor = nn.Linear(image_dim, rank * pool_factor)
        self.text_factor = nn.Linear(text_dim, rank * pool_factor)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(rank, out_dim)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fuse ``image`` [B, Di] and ``text`` [B, Dt] into [B, out_dim]."""
        check_pooled(image, text, self.image_dim, self.text_dim)
        z = self.dropout(self.image_factor(self.image_norm(image)) * self.text_factor(self.text_norm(text)))
        if self.pool_factor > 1:
            z = z.unflatten(-1, (self.rank, self.pool_factor)).sum(dim=-1)
        # Square root and L2 norm in at least float32: half precision loses them near 0.
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        z = F.normalize(signed_sqrt(z, self.eps), dim=-1)
        return self.out(z.to(image.dtype))


@FUSIONS.register("tensor")
class TensorFusion(Fusion):
    """Tensor fusion network (TFN; Zadeh et al., 2017): ``h = W · vec([v'; 1] ⊗ [t'; 1])``.

    ``v' = W_v LN(v)`` and ``t' = W_t LN(t)`` are small projections; the appended 1s keep the unimodal terms next to
    every bimodal product. The tensor has ``(proj_dim + 1)²`` entries, so ``proj_dim`` must stay small; the low-rank
    alternative is :class:`BilinearFusion` (``"bilinear"``).
    """

    max_tensor_size: ClassVar[int] = 65536

    def __init__(
        self, image_dim: int, text_dim: int, out_dim: int, *, proj_dim: int = 16, dropout: float = 0.1
    ) -> None:
        super().__init__(image_dim, text_dim, out_dim)
        if proj_dim < 1 or (proj_dim + 1) ** 2 > self.max_tensor_size:
            raise ValueError(
                f"proj_dim={proj_dim} gives a tensor of (proj_dim + 1)^2 = {(proj_dim + 1) ** 2} entries; "
                f"choose 1 <= proj_dim <= {int(self.max_tensor_size**0.5) - 1} or use 'bilinear' (low rank)"
            )
        self.proj_dim = proj_dim
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, proj_dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, proj_dim))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear((proj_dim + 1) ** 2, out_dim)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fuse ``image`` [B, Di] and ``text`` [B, Dt] into [B, out_dim]."""
        check_pooled(image, text, self.image_dim, self.text_dim)
        image, text = self.image_proj(image), self.text_proj(text)
        ones = image.new_ones(image.shape[0], 1)
        image, text = torch.cat([image, ones], dim=-1), torch.cat([text, ones], dim=-1)
        outer = torch.einsum("bi,bj->bij", image, text).flatten(1)
        return self.out(self.dropout(outer))
