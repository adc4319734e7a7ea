"""Element-wise fusions: every input projected to ``out_dim`` and normalised, then summed or multiplied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, fill_absent
from medfusion.fusion.checks import Inputs, Masks


class ElementwiseFusion(Fusion):
    """Shared body of ``add`` and ``mul``: ``p_i = LN(W_i x_i)``, ``h = Dropout(p_1 ∘ … ∘ p_N)`` with ``∘`` set
    by :meth:`combine`.

    The LayerNorms put every input on one scale, which the Hadamard product would otherwise amplify. An absent
    input's ``p_i`` is replaced, after the projection, by the neutral element of ``∘`` (:attr:`neutral`), so it
    has no influence on ``h``.
    """

    neutral: ClassVar[float]

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
        self.proj = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Linear(dim, self.out_dim), nn.LayerNorm(self.out_dim))
                for name, dim in self.dims.items()
            }
        )
        self.dropout = nn.Dropout(dropout)

    def combine(self, projected: torch.Tensor) -> torch.Tensor:
        """Reduce the stacked projections ``[B, N, out_dim]`` over the inputs to ``[B, out_dim]``."""
        raise NotImplementedError

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        # absent rows zeroed first (NaN there must not reach the weight gradients), then made neutral
        projected = [
            fill_absent(self.proj[name](fill_absent(inputs[name], masks[name])), masks[name], self.neutral)
            for name in self.names
        ]
        return self.dropout(self.combine(torch.stack(projected, dim=1)))


@FUSIONS.register("add")
class AddFusion(ElementwiseFusion):
    """Additive fusion (Baltrušaitis et al., 2019 survey): ``h = Σ_i LN(W_i x_i)``, an absent input counting 0.

    A sum, not a mean over the present inputs (HeMIS, Havaei et al., 2016): the two-input form stays
    ``LN(W_v v) + LN(W_t t)``, and, as in concatenation, an input's contribution does not change with which
    other inputs are present. Additive in the inputs, so interactions are left to a non-linear head.
    """

    neutral: ClassVar[float] = 0.0

    def combine(self, projected: torch.Tensor) -> torch.Tensor:
        return projected.sum(dim=1)


@FUSIONS.register("mul")
class MulFusion(ElementwiseFusion):
    """Multiplicative (Hadamard) fusion, the VQA baseline (Antol et al., 2015): ``h = ⊙_i LN(W_i x_i)``, an absent
    input counting 1."""

    neutral: ClassVar[float] = 1.0

    def combine(self, projected: torch.Tensor) -> torch.Tensor:
        return projected.prod(dim=1)
