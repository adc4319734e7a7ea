"""Attention pooling over a set of vectors (slices of a stack, images of a study), with its weights exposed."""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018, attention-based deep multiple-instance learning):
    ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))``, pooled ``sum_k a_k h_k``.

    ``forward(x [B, K, D], mask [B, K] | None)`` returns ``(pooled [B, D], weights [B, K])``; masked-out items get
    weight 0 (a row needs one item left).
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.value = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(x.dtype)
        return (weights.unsqueeze(-1) * x).sum(dim=1), weights
