"""Gated multimodal unit (GMU; Arevalo et al., ICLR workshop 2017)."""

from __future__ import annotations

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion
from medfusion.fusion.checks import check_pooled


class GatedUnit(nn.Module):
    """GMU core, reusable on any pair of vectors (Arevalo et al., 2017).

    ``h_a = tanh(W_a a)``, ``h_b = tanh(W_b b)``, ``z = σ(W_z [a; b])`` per dimension, ``h = z⊙h_a + (1−z)⊙h_b``.
    """

    def __init__(self, a_dim: int, b_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj_a = nn.Linear(a_dim, out_dim)
        self.proj_b = nn.Linear(b_dim, out_dim)
        self.gate = nn.Linear(a_dim + b_dim, out_dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fused ``h`` and the gate ``z`` (weight of ``a``), both [B, out_dim]."""
        z = torch.sigmoid(self.gate(torch.cat([a, b], dim=-1)))
        h = z * torch.tanh(self.proj_a(a)) + (1 - z) * torch.tanh(self.proj_b(b))
        return h, z


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Gated multimodal unit over pooled image and text features (Arevalo et al., 2017).

    ``h = z⊙tanh(W_v v) + (1−z)⊙tanh(W_t t)`` with ``z = σ(W_z [v; t])``. After each forward ``last_gate``
    holds ``z`` ([B, out_dim], detached; 1 = image, 0 = text) so that its mean per class can be logged: the gate
    can saturate onto one modality.
    """

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, *, dropout: float = 0.1) -> None:
        super().__init__(image_dim, text_dim, out_dim)
        self.unit = GatedUnit(image_dim, text_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.last_gate: torch.Tensor | None = None

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fuse ``image`` [B, Di] and ``text`` [B, Dt] into [B, out_dim]."""
        check_pooled(image, text, self.image_dim, self.text_dim)
        fused, gate = self.unit(image, text)
        self.last_gate = gate.detach()
        return self.dropout(fused)
