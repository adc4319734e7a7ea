"""Bilinear fusions: low-rank bilinear pooling (MLB / MFB) and the full outer-product tensor fusion (TFN)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, fill_absent
from medfusion.fusion.checks import Inputs, Masks


def signed_sqrt(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Power normalisation ``sign(x)·(√(|x|+ε) − √ε)``: continuous, 0 at 0, with a gradient bounded by 1/(2√ε)
    (the plain ``sign(x)·√|x|`` of MFB has an infinite gradient at 0)."""
    return torch.sign(x) * (torch.sqrt(x.abs() + eps) - eps**0.5)


@FUSIONS.register("bilinear")
class BilinearFusion(Fusion):
    """Low-rank bilinear pooling: MLB (Kim et al., 2017) with ``pool_factor=1``, MFB (Yu et al., 2017) with k > 1.

    ``z = SumPool_k(⊙_i U_iᵀ LN(x_i))`` at ``rank·k`` dims pooled over ``k`` consecutive dims, then
    ``h = W · L2(signed_sqrt(z))``; for two inputs ``SumPool_k(Uᵀ LN(v) ⊙ Vᵀ LN(t))``, with N the same low-rank
    factors give the N-way multilinear pooling. An absent input's factor ``U_iᵀ LN(x_i)`` is replaced by ones,
    the neutral element of ``⊙``. The full outer product is :class:`TensorFusion` (``"tensor"``).
    """

    def __init__(
        self,
        dims: Mapping[str, int] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: int | None = None,
        text_dim: int | None = None,
        rank: int = 256,
        pool_factor: int = 1,
        dropout: float = 0.1,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        if rank < 1 or pool_factor < 1:
            raise ValueError(f"rank and pool_factor must be >= 1, got rank={rank}, pool_factor={pool_factor}")
        self.rank = rank
        self.pool_factor = pool_factor
        self.eps = eps
        # Normalised inputs keep the Hadamard product on a sane scale (it multiplies the N scales).
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim) for name, dim in self.dims.items()})
        self.factors = nn.ModuleDict({name: nn.Linear(dim, rank * pool_factor) for name, dim in self.dims.items()})
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(rank, self.out_dim)

    def factor(self, name: str, x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """``U_iᵀ LN(x_i)`` ``[B, rank·k]`` in at least float32 (a product of N half-precision factors overflows),
        ones where the input is absent."""
        f = self.factors[name](self.norms[name](fill_absent(x, present)))
        return fill_absent(f.to(torch.promote_types(f.dtype, torch.float32)), present, 1.0)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        factors = [self.factor(name, inputs[name], masks[name]) for name in self.names]
        z = self.dropout(functools.reduce(operator.mul, factors))
        if self.pool_factor > 1:
            z = z.unflatten(-1, (self.rank, self.pool_factor)).sum(dim=-1)
        # Square root and L2 norm in at least float32 (z already is): half precision loses them near 0.
        z = F.normalize(signed_sqrt(z, self.eps), dim=-1)
        return self.out(z.to(inputs[self.names[0]].dtype))


@FUSIONS.register("tensor")
class TensorFusion(Fusion):
    """Tensor fusion network (TFN; Zadeh et al., 2017): ``h = W · vec([x_1'; 1] ⊗ … ⊗ [x_N'; 1])``.

    ``x_i' = W_i LN(x_i)`` are small projections; the appended 1s keep every lower-order term (unimodal,
    bimodal, ...) next to the N-way products. An absent input's ``x_i'`` is zeroed, so only its 1 remains and the
    terms of the other inputs survive. The tensor has ``(proj_dim + 1)^N`` entries, at most ``max_tensor_size``;
    the low-rank alternative that scales to many inputs is :class:`LowRankTensorFusion` (``"lmf"``).
    """

    max_tensor_size: ClassVar[int] = 65536

    def __init__(
        self,
        dims: Mapping[str, int] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: int | None = None,
        text_dim: int | None = None,
        proj_dim: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        n = len(self.dims)
        size = (proj_dim + 1) ** n
        if proj_dim < 1 or size > self.max_tensor_size:
            largest = 0
            while (largest + 2) ** n <= self.max_tensor_size:
                largest += 1
            fix = f"choose 1 <= proj_dim <= {largest}" if largest else f"no proj_dim fits {n} inputs"
            raise ValueError(
                f"proj_dim={proj_dim} gives a tensor of (proj_dim + 1)^{n} = {size} entries over the inputs "
                f"{self.names} (max_tensor_size {self.max_tensor_size}); {fix}, or use 'lmf' (low-rank tensor fusion)"
            )
        self.proj_dim = proj_dim
        self.proj = nn.ModuleDict(
            {name: nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, proj_dim)) for name, dim in self.dims.items()}
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(size, self.out_dim)

    def extended(self, name: str, x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """``[x_i'; 1]`` ``[B, proj_dim + 1]``, with ``x_i' = 0`` where the input is absent."""
        p = fill_absent(self.proj[name](fill_absent(x, present)), present)
        return torch.cat([p, p.new_ones(p.shape[0], 1)], dim=-1)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        factors = [self.extended(name, inputs[name], masks[name]) for name in self.names]
        outer = factors[0]
        for f in factors[1:]:  # flattened row-major, index (i_1, …, i_N)
            outer = (outer[:, :, None] * f[:, None, :]).flatten(1)
        return self.out(self.dropout(outer))
