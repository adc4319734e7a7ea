"""Low-rank multimodal fusion (LMF; Liu et al., ACL 2018): tensor fusion without the tensor, linear in N."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, fill_absent
from medfusion.fusion.checks import Inputs, Masks


@FUSIONS.register("lmf")
class LowRankTensorFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al., 2018): TFN's ``W · vec(⊗_i [x_i; 1])`` (:class:`TensorFusion`)
    with ``W`` of rank ``r`` factorised per input, computed as

    ``h = Dropout(Σ_{k=1..r} ⊙_i (W_i^(k) [LN(x_i); 1]) + b)``

    at a cost linear in N and in each ``D_i``, so it needs no small projections and scales to many inputs. Each
    ``W_i^(k) [x; 1]`` is one ``Linear`` (its bias is the column of the appended 1) for all ``k`` at once; the
    paper's per-rank weights are absorbed into the factors. The bias columns start at 1, so that, as with TFN's
    constant 1s, every lower-order product is there from the start. An absent input becomes ``[0; 1]``: its
    factor is its bias column, and the other inputs' terms survive.
    """

    def __init__(
        self,
        dims: Mapping[str, int] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: int | None = None,
        text_dim: int | None = None,
        rank: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank = rank
        # LayerNorm puts the N inputs on one scale before their product multiplies the scales.
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim) for name, dim in self.dims.items()})
        self.factors = nn.ModuleDict({name: nn.Linear(dim, rank * self.out_dim) for name, dim in self.dims.items()})
        for factor in self.factors.values():
            nn.init.ones_(factor.bias)
        self.bias = nn.Parameter(torch.zeros(self.out_dim))
        self.dropout = nn.Dropout(dropout)

    def factor(self, name: str, x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """``W_i^(k) [LN(x_i); 1]`` for every k, ``[B, rank·out_dim]`` in at least float32 (a product of N
        half-precision factors overflows), with ``LN(x_i) = 0`` where the input is absent."""
        f = self.factors[name](fill_absent(self.norms[name](fill_absent(x, present)), present))
        return f.to(torch.promote_types(f.dtype, torch.float32))

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        product = functools.reduce(operator.mul, [self.factor(name, inputs[name], masks[name]) for name in self.names])
        h = product.unflatten(-1, (self.rank, self.out_dim)).sum(dim=1) + self.bias
        return self.dropout(h.to(inputs[self.names[0]].dtype))
