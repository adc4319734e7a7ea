"""Study-level encoding: each of a study's images through a 2D image encoder, then pooled per study."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from medfusion.encoders.encoded import Encoded
from medfusion.encoders.image import ImageEncoder
from medfusion.encoders.pooling import GatedAttentionPool

StudyPooling = Literal["mean", "max", "attention"]


class StudyEncoder(nn.Module):
    """Encodes studies of 1..M images, batched as ``images [B, M, 3, H, W]`` with ``mask [B, M]`` (True = a real
    image; see :mod:`medfusion.data.studies`): every real image through the backbone (padding never is), then
    pooled per study by ``mean``, ``max`` (per feature) or gated ``attention`` (Ilse et al. 2018), whose per-image
    weights ``[B, M]`` of the last forward are in :attr:`image_weights`. Tokens are the study's image vectors
    (masked), levels the backbone's averaged over the study's images.

    Args:
        encoder: builds the 2D backbone (an :class:`ImageEncoder` factory).
        pooling: ``mean``, ``max`` or ``attention``.
    """

    def __init__(self, encoder: Callable[..., ImageEncoder], pooling: StudyPooling = "attention") -> None:
        super().__init__()
        if pooling not in ("mean", "max", "attention"):
            raise ValueError(f"study pooling must be mean, max or attention, got {pooling!r}")
        self.backbone, self.pooling = encoder(), pooling
        self.out_dim = self.token_dim = self.backbone.out_dim
        self.level_dims = self.backbone.level_dims
        self.image_weights: torch.Tensor | None = None
        if pooling == "attention":
            self.pool = GatedAttentionPool(self.out_dim)

    @property
    def wants_pretrained(self) -> bool:
        return self.backbone.wants_pretrained

    def load_pretrained(self) -> None:
        self.backbone.load_pretrained()

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor, *, tokens: bool = False, levels: bool = False
    ) -> Encoded:
        """Encode a batch of studies; every study needs one real image."""
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every study passed to StudyEncoder needs one image (mask all False in a row)")
        encoded = self.backbone(images[mask], levels=levels)  # the real images only, [N, 3, H, W]
        x = encoded.pooled.new_zeros((*mask.shape, encoded.pooled.shape[-1]))
        x[mask] = encoded.pooled
        weights = mask.to(x.dtype) / mask.sum(dim=1, keepdim=True)
        if self.pooling == "mean":
            pooled = (weights.unsqueeze(-1) * x).sum(dim=1)
        elif self.pooling == "max":
            pooled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            pooled, weights = self.pool(x, mask)
        self.image_weights = weights.detach()
        out = Encoded(pooled=pooled)
        if tokens:
            out.tokens, out.mask = x, mask
        if levels:
            share = mask.to(x.dtype) / mask.sum(dim=1, keepdim=True)
            out.levels = []
            for level in encoded.levels:
                full = level.new_zeros((*mask.shape, level.shape[-1]))
                full[mask] = level
                out.levels.append((share.unsqueeze(-1) * full).sum(dim=1))
        return out
