"""Input validation shared by the fusions: one clear ``ValueError`` instead of a shape error deep inside a layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medfusion.fusion.base import check_last_dim


def check_same_batch(image: torch.Tensor, text: torch.Tensor) -> None:
    """Raise a ``ValueError`` when ``image`` and ``text`` hold different numbers of samples."""
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"image and text batch sizes differ: {image.shape[0]} vs {text.shape[0]}")


def check_pooled(image: torch.Tensor, text: torch.Tensor, image_dim: int, text_dim: int) -> None:
    """Validate pooled inputs: ``image`` [B, image_dim], ``text`` [B, text_dim]."""
    check_last_dim("image", image, image_dim, 2)
    check_last_dim("text", text, text_dim, 2)
    check_same_batch(image, text)


def check_mask(name: str, mask: torch.Tensor | None, tokens: torch.Tensor) -> None:
    """Validate a token mask: bool ``[B, N]`` matching ``tokens`` with at least one real (True) token per sample."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = real token), got {mask.dtype}; pass e.g. mask.bool()")
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"{name} must be [B, N] = {list(tokens.shape[:2])}, got {list(mask.shape)}")
    if not bool(mask.any(dim=1).all()):
        raise ValueError(f"{name}: every sample needs at least one real token (True); handle empty modalities upstream")


def check_tokens(
    image: torch.Tensor,
    text: torch.Tensor,
    image_dim: int,
    text_dim: int,
    image_mask: torch.Tensor | None,
    text_mask: torch.Tensor | None,
) -> None:
    """Validate token inputs: ``image`` [B, Ni, image_dim], ``text`` [B, Nt, text_dim] and their optional masks."""
    check_last_dim("image", image, image_dim, 3)
    check_last_dim("text", text, text_dim, 3)
    check_same_batch(image, text)
    check_mask("image_mask", image_mask, image)
    check_mask("text_mask", text_mask, text)


def check_levels(
    image: Sequence[torch.Tensor], text: Sequence[torch.Tensor], image_dims: Sequence[int], text_dims: Sequence[int]
) -> None:
    """Validate multi-level inputs: two lists of ``[B, D_l]`` tensors, one per level of ``image_dims``/``text_dims``."""
    for name, levels, dims in (("image", image, image_dims), ("text", text, text_dims)):
        if isinstance(levels, torch.Tensor) or not isinstance(levels, Sequence):
            raise ValueError(f"{name} must be a list of {len(dims)} tensors [B, D_l], got {type(levels).__name__}")
        if len(levels) != len(dims):
            raise ValueError(f"{name} must have {len(dims)} levels (dims {list(dims)}), got {len(levels)}")
        for level, (x, dim) in enumerate(zip(levels, dims, strict=True)):
            check_last_dim(f"{name} level {level}", x, dim, 2)
            check_same_batch(image[0], x)
