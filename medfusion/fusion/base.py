"""The fusion contract and its registry.

A fusion is a plain ``nn.Module`` over tensors so that other projects can use it
without Lightning::

    fusion = build_fusion("gated", image_dim=512, text_dim=768, out_dim=256)
    fused = fusion(image, text)  # [B, 256]

``input_kind`` tells the model which encoder outputs to feed:
``"pooled"`` -> ``([B, Di], [B, Dt])``; ``"tokens"`` -> ``([B, Ni, Di], [B, Nt, Dt])``
with keyword masks ``image_mask=`` / ``text_mask=`` (bool, True = real token);
``"levels"`` -> two lists of ``[B, D_l]`` tensors (dims given as lists).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medfusion.registry import Registry

InputKind = Literal["pooled", "tokens", "levels"]


class Fusion(nn.Module):
    """Base class of all fusions: holds ``image_dim``, ``text_dim``, ``out_dim``, ``input_kind``."""

    input_kind: ClassVar[InputKind] = "pooled"

    def __init__(self, image_dim: Any, text_dim: Any, out_dim: int) -> None:
        super().__init__()
        self.image_dim = image_dim
        self.text_dim = text_dim
        self.out_dim = out_dim

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary training losses of the last forward (none by default)."""
        return {}


FUSIONS: Registry[Fusion] = Registry("fusion")


def build_fusion(name: str, *, image_dim: Any, text_dim: Any, out_dim: int, **hparams: Any) -> Fusion:
    """Build a registered fusion by name, e.g. ``build_fusion("gated", image_dim=512, text_dim=768, out_dim=256)``."""
    return FUSIONS.build(name, image_dim=image_dim, text_dim=text_dim, out_dim=out_dim, **hparams)


def check_last_dim(name: str, x: torch.Tensor, dim: int, ndim: int) -> None:
    """Raise a clear ``ValueError`` when ``x`` is not ``ndim``-D with last dim ``dim``."""
    if x.ndim != ndim or x.shape[-1] != dim:
        want = "[B, D]" if ndim == 2 else "[B, N, D]"
        raise ValueError(f"{name} must be {want} with D={dim}, got shape {tuple(x.shape)}")
