"""Input validation shared by the fusions: one clear ``ValueError`` naming the input, instead of a shape error deep
inside a layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Inputs = dict[str, Any]  # name -> tensor (pooled, tokens) or list of tensors (levels)
Masks = dict[str, torch.Tensor | None]


def check_last_dim(name: str, x: torch.Tensor, dim: int, ndim: int) -> None:
    """Raise a clear ``ValueError`` when ``x`` is not ``ndim``-D with last dim ``dim``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.ndim != ndim or x.shape[-1] != dim:
        want = "[B, D]" if ndim == 2 else "[B, N, D]"
        raise ValueError(f"{name} must be {want} with D={dim}, got shape {tuple(x.shape)}")


def check_inputs(kind: str, inputs: Inputs, masks: Masks, dims: dict[str, Any]) -> None:
    """Validate named inputs of ``kind`` (pooled, tokens, levels) against ``dims``: shapes, one batch size, masks."""
    batch: tuple[str, int] | None = None
    for name, x in inputs.items():
        if kind == "levels":
            check_levels(name, x, dims[name])
            size = x[0].shape[0]
        else:
            check_last_dim(name, x, dims[name], 2 if kind == "pooled" else 3)
            size = x.shape[0]
        if batch is None:
            batch = (name, size)
        elif size != batch[1]:
            raise ValueError(f"batch sizes differ: {batch[0]} has {batch[1]} samples, {name} has {size}")
        if kind == "tokens":
            check_mask(f"{name} mask", masks[name], x)
        else:
            check_presence(f"{name} mask", masks[name], size)


def check_mask(name: str, mask: torch.Tensor | None, tokens: torch.Tensor) -> None:
    """Validate a token mask: bool ``[B, N]`` matching ``tokens`` with at least one real (True) token per sample."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = real token), got {mask.dtype}; pass e.g. mask.bool()")
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"{name} must be [B, N] = {list(tokens.shape[:2])}, got {list(mask.shape)}")
    if not torch.compiler.is_exporting() and not bool(mask.any(dim=1).all()):  # a value check: not traceable
        raise ValueError(f"{name}: every sample needs at least one real token (True); handle empty modalities upstream")


def check_presence(name: str, mask: torch.Tensor | None, batch_size: int) -> None:
    """Validate a presence mask of pooled or level inputs: bool ``[B]`` (True = the sample has this input)."""
    if mask is None:
        return
    if mask.dtype != torch.bool or mask.shape != (batch_size,):
        raise ValueError(
            f"{name} must be a bool tensor [B] = [{batch_size}] (True = present), got {mask.dtype} {list(mask.shape)}"
        )


def check_levels(name: str, levels: Sequence[torch.Tensor], dims: Sequence[int]) -> None:
    """Validate one multi-level input: a list of ``[B, D_l]`` tensors, one per level of ``dims``."""
    if isinstance(levels, torch.Tensor) or not isinstance(levels, Sequence):
        raise ValueError(f"{name} must be a list of {len(dims)} tensors [B, D_l], got {type(levels).__name__}")
    if len(levels) != len(dims):
        raise ValueError(f"{name} must have {len(dims)} levels (dims {list(dims)}), got {len(levels)}")
    for level, (x, dim) in enumerate(zip(levels, dims, strict=True)):
        check_last_dim(f"{name} level {level}", x, dim, 2)
        if x.shape[0] != levels[0].shape[0]:
            raise ValueError(f"{name} level {level} has {x.shape[0]} samples, level 0 has {levels[0].shape[0]}")
