"""Hierarchical fusion: gated fusion of N inputs at several encoder depths, mixed by learned level weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, InputKind, fill_absent
from medfusion.fusion.checks import Inputs, Masks
from medfusion.fusion.gated import GatedUnit

LevelWeighting = Literal["softmax", "sigmoid"]


@FUSIONS.register("hierarchical")
class HierarchicalFusion(Fusion):
    """Level-wise N-input GMU (Arevalo et al., 2017) combined by a scalar mix (ELMo, Peters et al., 2018).

    Every input gives L level vectors ``x_{m,l}`` [B, D_{m,l}] (``dims``: one list of L sizes per input). Per
    level, ``h_l, z_l = GMU_l(LN_{m,l}(x_{m,l}) for m)`` with ``z_l`` [B, N, out_dim] a softmax over the inputs
    per feature (see :class:`~medfusion.fusion.gated.GatedUnit`); ``h = Σ_l w_l h_l`` with ``w = softmax(s)``
    (or ``σ(s)``) and scalar logits ``s`` initialised at 0 (equal weights). The LayerNorms put conv and
    transformer levels on one scale. Presence masks (bool [B], False = absent): an absent input is zeroed before
    its LayerNorm (its values reach nothing, NaN included) and gets gate weight 0 at every level.

    :meth:`level_weights` gives ``w``; :meth:`modality_weights` the last forward's
    ``Σ_l (w_l / Σ_k w_k) · mean_d z_l[:, m, d]`` [B, N]: rows sum to 1 (0 for a sample with no input present).
    """

    input_kind: ClassVar[InputKind] = "levels"

    def __init__(
        self,
        dims: Mapping[str, Any] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: Any = None,
        text_dim: Any = None,
        level_weighting: LevelWeighting = "softmax",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        lengths = {len(d) if isinstance(d, list) else 0 for d in self.dims.values()}
        if 0 in lengths or len(lengths) != 1:
            raise ValueError(
                f"dims must be non-empty lists of equal length (one dim per level) for every input, got {self.dims}. "
                "Fix: give every encoder the same number of levels (ImageEncoder and TextEncoder num_levels, "
                "TabularEncoder num_layers; 3 by default)."
            )
        if level_weighting not in get_args(LevelWeighting):
            raise ValueError(f"level_weighting must be one of {get_args(LevelWeighting)}, got {level_weighting!r}")
        self.level_weighting = level_weighting
        per_level = [[self.dims[name][level] for name in self.names] for level in range(lengths.pop())]
        # Indexed [level][input position], so that any input name works (no ModuleDict keys).
        self.norms = nn.ModuleList(nn.ModuleList(nn.LayerNorm(d) for d in sizes) for sizes in per_level)
        self.units = nn.ModuleList(GatedUnit(sizes, self.out_dim) for sizes in per_level)
        self.level_logits = nn.Parameter(torch.zeros(len(per_level)))
        self.dropout = nn.Dropout(dropout)
        self._weights: torch.Tensor | None = None

    @property
    def num_levels(self) -> int:
        """Number of levels L."""
        return len(self.units)

    def level_weights(self) -> torch.Tensor:
        """Current level weights [L]: softmax (sums to 1) or independent sigmoids of the logits."""
        if self.level_weighting == "softmax":
            return torch.softmax(self.level_logits, dim=0)
        return torch.sigmoid(self.level_logits)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        """Fuse validated level lists ``{name: [x_0 [B, D_0], ...]}`` (presence masks bool [B]) into [B, out_dim]."""
        present = [masks[name] for name in self.names]
        fused, gates = [], []
        for level, (unit, norms) in enumerate(zip(self.units, self.norms, strict=True)):
            xs = []
            for norm, name, mask in zip(norms, self.names, present, strict=True):
                x = inputs[name][level]
                xs.append(norm(fill_absent(x, mask)))
            h, z = unit(xs, present)
            fused.append(h)
            gates.append(z)
        weights = self.level_weights()
        share = (weights / weights.sum()).detach()
        self._weights = (torch.stack(gates, dim=1).detach().mean(dim=-1) * share[:, None]).sum(dim=1)
        stacked = torch.stack(fused, dim=1)  # [B, L, out_dim]
        return self.dropout((stacked * weights.to(stacked.dtype)[:, None]).sum(dim=1))

    def modality_weights(self) -> torch.Tensor | None:
        """The last forward's gate weight of each input, averaged over features and over levels (weighted by the
        level weights), ``[B, N]`` in ``names`` order; None before the first forward."""
        return self._weights
