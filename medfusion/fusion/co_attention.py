"""Co-attention fusion: text attends over image and image over text in parallel, layer by layer."""

from __future__ import annotations

import torch
from torch import nn

from medfusion.fusion.attention import TokenFusion, block_stack, masked_mean
from medfusion.fusion.base import FUSIONS


@FUSIONS.register("co_attention")
class CoAttentionFusion(TokenFusion):
    """Two-stream co-attention (ViLBERT co-attentional layers, Lu et al., 2019; without the intra-modal layers).

    Per layer ``t' = Block(t; v)`` and ``v' = Block(v; t)`` from the same inputs; then
    ``h = W [mean_real(LN(t)); mean_real(LN(v))]``. With ``store_attention=True``, ``last_attention`` holds the last
    layer's per-head maps ``{"text_to_image": [B, heads, Nt, Ni], "image_to_text": [B, heads, Ni, Nt]}``.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        out_dim: int,
        *,
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
        self.text_blocks = block_stack(num_layers, self.dim, num_heads, dropout, ffn_mult)
        self.image_blocks = block_stack(num_layers, self.dim, num_heads, dropout, ffn_mult)
        self.text_norm = nn.LayerNorm(self.dim)
        self.image_norm = nn.LayerNorm(self.dim)
        self.out = nn.Linear(2 * self.dim, out_dim)
        self.last_attention: dict[str, torch.Tensor] | None = None

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
        for text_block, image_block in zip(self.text_blocks, self.image_blocks, strict=True):
            new_text, text_weights = text_block(text, image, image_mask, need_weights=self.store_attention)
            image, image_weights = image_block(image, text, text_mask, need_weights=self.store_attention)
            text = new_text
        if text_weights is not None and image_weights is not None:
            self.last_attention = {"text_to_image": text_weights.detach(), "image_to_text": image_weights.detach()}
        pooled = [masked_mean(self.text_norm(text), text_mask), masked_mean(self.image_norm(image), image_mask)]
        return self.out(torch.cat(pooled, dim=-1))
