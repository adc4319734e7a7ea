"""Hierarchical fusion: gated fusion at several encoder depths, mixed by learned level weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal, get_args

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, InputKind
from medfusion.fusion.checks import check_levels
from medfusion.fusion.gated import GatedUnit

LevelWeighting = Literal["softmax", "sigmoid"]


@FUSIONS.register("hierarchical")
class HierarchicalFusion(Fusion):
    """Level-wise GMU (Arevalo et al., 2017) combined by a scalar mix (ELMo, Peters et al., 2018).

    ``h_l = GMU(LN(v_l), LN(t_l))`` per level, ``h = Σ_l w_l h_l`` with ``w = softmax(s)`` (or ``σ(s)``) and
    scalar logits ``s`` initialised at 0 (equal weights). The LayerNorms put conv and transformer levels on one
    scale. ``level_weights()`` gives ``w``; after each forward ``last_gate`` ([B, L, out_dim], detached; 1 = image)
    and ``last_gate_means`` ([L]) hold the gates for logging.
    """

    input_kind: ClassVar[InputKind] = "levels"

    def __init__(
        self,
        image_dim: Sequence[int],
        text_dim: Sequence[int],
        out_dim: int,
        *,
        level_weighting: LevelWeighting = "softmax",
        dropout: float = 0.1,
    ) -> None:
        image_dim, text_dim = list(image_dim), list(text_dim)
        if not image_dim or len(image_dim) != len(text_dim):
            raise ValueError(
                f"image_dim and text_dim must be non-empty lists of equal length (one dim per level), "
                f"got {image_dim} and {text_dim}"
            )
        if level_weighting not in get_args(LevelWeighting):
            raise ValueError(f"level_weighting must be one of {get_args(LevelWeighting)}, got {level_weighting!r}")
        super().__init__(image_dim, text_dim, out_dim)
        self.level_weighting = level_weighting
        self.image_norms = nn.ModuleList(nn.LayerNorm(d) for d in image_dim)
        self.text_norms = nn.ModuleList(nn.LayerNorm(d) for d in text_dim)
        self.units = nn.ModuleList(GatedUnit(di, dt, out_dim) for di, dt in zip(image_dim, text_dim, strict=True))
        self.level_logits = nn.Parameter(torch.zeros(len(image_dim)))
        self.dropout = nn.Dropout(dropout)
        self.last_gate: torch.Tensor | None = None
        self.last_gate_means: torch.Tensor | None = None

    @property
    def num_levels(self) -> int:
        """Number of levels L."""
        return len(self.units)

    def level_weights(self) -> torch.Tensor:
        """Current level weights [L]: softmax (sums to 1) or independent sigmoids of the logits."""
        if self.level_weighting == "softmax":
            return torch.softmax(self.level_logits, dim=0)
        return torch.sigmoid(self.level_logits)

    def forward(self, image: Sequence[torch.Tensor], text: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse L image levels [B, Di_l] and L text levels [B, Dt_l] into [B, out_dim]."""
        check_levels(image, text, self.image_dim, self.text_dim)
        fused, gates = [], []
        levels = zip(self.units, self.image_norms, self.text_norms, image, text, strict=True)
        for unit, image_norm, text_norm, v, t in levels:
            h, z = unit(image_norm(v), text_norm(t))
            fused.append(h)
            gates.append(z)
        gate = torch.stack(gates, dim=1).detach()
        self.last_gate, self.last_gate_means = gate, gate.mean(dim=(0, 2))
        stacked = torch.stack(fused, dim=1)  # [B, L, out_dim]
        return self.dropout((stacked * self.level_weights().to(stacked.dtype)[:, None]).sum(dim=1))
