"""2.5D: a stack of neighbouring slices ``[B, K, 3, H, W]`` through a 2D image encoder, as channels or as a
sequence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from medfusion.encoders.encoded import Encoded
from medfusion.encoders.image import ImageEncoder
from medfusion.encoders.pooling import GatedAttentionPool

SliceMode = Literal["channels", "sequence"]
SlicePooling = Literal["transformer", "attention"]


class SliceStackEncoder(nn.Module):
    """Encodes a slice stack (see :mod:`medfusion.data.slices`) with a 2D backbone.

    ``channels``: each slice's grey level (the mean of its three normalised channels) is one input channel of a
    backbone built with ``in_chans=K`` (pretrained weights of its first convolution spread over the K channels,
    see :class:`ImageEncoder`); one pass, tokens and levels as the backbone gives them.

    ``sequence``: every slice through the backbone (shared weights), ``[B, K, D]``, plus a learned embedding of
    each slice's position, then (``transformer``) a small Transformer encoder over the slices and gated attention
    pooling (Ilse et al. 2018), or (``attention``) the pooling alone. The per-slice weights ``[B, K]`` of the last
    forward are in :attr:`slice_weights`; tokens are the K slice vectors, levels the backbone's averaged over the
    slices. K passes of the backbone per sample: K times the image cost.

    Args:
        encoder: builds the 2D backbone (an :class:`ImageEncoder` factory; called with ``in_chans=K`` for channels).
        num_slices: K.
        mode: ``channels`` or ``sequence``.
        pooling: ``transformer`` or ``attention`` (sequence mode).
        layers: Transformer layers (sequence mode with ``transformer``).
    """

    def __init__(
        self,
        encoder: Callable[..., ImageEncoder],
        num_slices: int,
        mode: SliceMode = "sequence",
        pooling: SlicePooling = "transformer",
        layers: int = 1,
    ) -> None:
        super().__init__()
        if mode not in ("channels", "sequence") or pooling not in ("transformer", "attention"):
            raise ValueError(
                f"slice mode must be channels|sequence and pooling transformer|attention: {mode}, {pooling}"
            )
        self.num_slices, self.mode, self.pooling = num_slices, mode, pooling
        self.backbone = encoder(in_chans=num_slices) if mode == "channels" else encoder()
        self.out_dim, self.token_dim = self.backbone.out_dim, self.backbone.token_dim
        self.level_dims = self.backbone.level_dims
        self.slice_weights: torch.Tensor | None = None
        if mode == "sequence":
            dim = self.out_dim
            self.token_dim = dim
            self.position = nn.Parameter(torch.zeros(num_slices, dim))
            nn.init.trunc_normal_(self.position, std=0.02)
            if pooling == "transformer":
                heads = next(h for h in (8, 4, 2, 1) if dim % h == 0)
                layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
                self.mixer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.pool = GatedAttentionPool(dim)

    @property
    def wants_pretrained(self) -> bool:
        return self.backbone.wants_pretrained

    def load_pretrained(self) -> None:
        self.backbone.load_pretrained()

    def forward(self, stack: torch.Tensor, *, tokens: bool = False, levels: bool = False) -> Encoded:
        """Encode ``stack`` ``[B, K, 3, H, W]``."""
        if stack.ndim != 5 or stack.shape[1] != self.num_slices:
            raise ValueError(
                f"a stack of {self.num_slices} slices [B, K, 3, H, W] was expected, got {tuple(stack.shape)}"
            )
        if self.mode == "channels":
            return self.backbone(stack.mean(dim=2), tokens=tokens, levels=levels)
        batch, k = stack.shape[:2]
        per_slice = self.backbone(stack.flatten(0, 1), levels=levels)
        x = per_slice.pooled.view(batch, k, -1) + self.position
        if self.pooling == "transformer":
            x = self.mixer(x)
        pooled, weights = self.pool(x)
        self.slice_weights = weights.detach()
        out = Encoded(pooled=pooled)
        if tokens:
            out.tokens, out.mask = x, torch.ones(batch, k, dtype=torch.bool, device=x.device)
        if levels:
            out.levels = [level.view(batch, k, -1).mean(dim=1) for level in per_slice.levels]
        return out
