"""Building blocks of the attention fusions: pre-norm cross-attention block, masked mean, token-input base."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from medfusion.fusion.base import Fusion, InputKind
from medfusion.fusion.checks import check_tokens


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` [B, N, D] over its real tokens (``mask`` [B, N], True = real; None = all real) -> [B, D]."""
    if mask is None:
        return x.mean(dim=1)
    keep = mask.unsqueeze(-1)
    total = x.masked_fill(~keep, 0.0).sum(dim=1)
    return total / keep.sum(dim=1).clamp_min(1).to(x.dtype)


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual cross-attention + feed-forward (ViLBERT, Lu et al. 2019; MulT, Tsai et al. 2019).

    ``q = q + Attn(LN(q), LN(c), LN(c))``, ``q = q + FFN(LN(q))``; no causal mask (patches have no order).
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.1, ffn_mult: int = 4) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Update ``query`` [B, Nq, D] from ``context`` [B, Nk, D]; weights [B, heads, Nq, Nk] if ``need_weights``."""
        context = self.norm_context(context)
        attended, weights = self.attn(
            self.norm_query(query),
            context,
            context,
            key_padding_mask=None if context_mask is None else ~context_mask,  # nn.MultiheadAttention: True = ignore
            need_weights=need_weights,
            average_attn_weights=False,
        )
        query = query + self.attn_dropout(attended)
        return query + self.ffn(self.norm_ffn(query)), weights


def block_stack(num_layers: int, dim: int, num_heads: int, dropout: float, ffn_mult: int) -> nn.ModuleList:
    """``num_layers`` :class:`CrossAttentionBlock` s of width ``dim`` (at least one)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return nn.ModuleList(CrossAttentionBlock(dim, num_heads, dropout, ffn_mult) for _ in range(num_layers))


class TokenFusion(Fusion):
    """Base of the attention fusions: validates token inputs, projects both modalities to ``dim`` and adds a
    learned positional embedding to the image patches (text hidden states already carry their positions)."""

    input_kind: ClassVar[InputKind] = "tokens"

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        out_dim: int,
        *,
        dim: int | None,
        max_image_tokens: int,
        store_attention: bool,
    ) -> None:
        super().__init__(image_dim, text_dim, out_dim)
        self.dim = out_dim if dim is None else dim
        self.max_image_tokens = max_image_tokens
        self.store_attention = store_attention
        self.image_proj = nn.Linear(image_dim, self.dim)
        self.text_proj = nn.Linear(text_dim, self.dim)
        self.image_pos = nn.Parameter(torch.zeros(1, max_image_tokens, self.dim))
        nn.init.trunc_normal_(self.image_pos, std=0.02)

    def embed(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_mask: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and project ``image`` [B, Ni, Di] and ``text`` [B, Nt, Dt] to ``[B, N, dim]`` each."""
        check_tokens(image, text, self.image_dim, self.text_dim, image_mask, text_mask)
        num_patches = image.shape[1]
        if num_patches > self.max_image_tokens:
            raise ValueError(
                f"got {num_patches} image tokens but max_image_tokens={self.max_image_tokens}; "
                "raise max_image_tokens (the size of the positional embedding)"
            )
        # Zero padded features so that nothing from them (not even NaN or inf) can leak into real tokens.
        if image_mask is not None:
            image = image.masked_fill(~image_mask.unsqueeze(-1), 0.0)
        if text_mask is not None:
            text = text.masked_fill(~text_mask.unsqueeze(-1), 0.0)
        return self.image_proj(image) + self.image_pos[:, :num_patches], self.text_proj(text)
