"""Cross-attention fusion: the tokens of one modality attend over the tokens of the other."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from medfusion.fusion.attention import TokenFusion, block_stack, masked_mean
from medfusion.fusion.base import FUSIONS

Direction = Literal["text_to_image", "image_to_text"]


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(TokenFusion):
    """One-directional cross-attention (MulT, Tsai et al., 2019; one stream of ViLBERT, Lu et al., 2019).

    ``q = Blocks(q; c)`` with queries ``q`` from one modality and keys/values ``c`` from the other (default: text
    tokens over image patches), then ``h = W · mean_real(LN(q))`` over the real query tokens only. With
    ``store_attention=True`` the last layer's per-head maps are kept in ``last_attention`` ([B, heads, Nq, Nk]).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        out_dim: int,
        *,
        direction: Direction = "text_to_image",
        num_layers: int = 1,
        num_heads: int = 8,
        dropout: float = 0.1,
        ffn_mult: int = 4,
        dim: int | None = None,
        max_image_tokens: int = 256,
        store_attention: bool = False,
    ) -> None:
        super().__init__(
            image_dim, text_dim, out_dim, dim=dim, max_image_tokens=max_image_tokens, store_attention=store_attention
        )
        if direction not in get_args(Direction):
            raise ValueError(f"direction must be one of {get_args(Direction)}, got {direction!r}")
        self.direction = direction
        self.blocks = block_stack(num_layers, self.dim, num_heads, dropout, ffn_mult)
        self.norm = nn.LayerNorm(self.dim)
        self.out = nn.Linear(self.dim, out_dim)
        self.last_attention: torch.Tensor | None = None

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        *,
        image_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse ``image`` [B, Ni, Di] and ``text`` [B, Nt, Dt] (bool masks, True = real) into [B, out_dim]."""
        image, text = self.embed(image, text, image_mask, text_mask)
        if self.direction == "text_to_image":
            query, query_mask, context, context_mask = text, text_mask, image, image_mask
        else:
            query, query_mask, context, context_mask = image, image_mask, text, text_mask
        for block in self.blocks:
            query, weights = block(query, context, context_mask, need_weights=self.store_attention)
        if weights is not None:
            self.last_attention = weights.detach()
        return self.out(masked_mean(self.norm(query), query_mask))
