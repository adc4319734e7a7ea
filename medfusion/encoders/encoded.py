"""The :class:`Encoded` dataclass every encoder returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    """Features of one modality for a batch.

    Attributes:
        pooled: ``[B, D]`` one vector per sample (image GAP / text CLS or masked mean).
        tokens: ``[B, N, D]`` image patches of the last feature map or text hidden states.
        mask: ``[B, N]`` bool, True = real token (image patches are all True).
        levels: pooled ``[B, D_l]`` features from several depths, shallow to deep.
    Only the fields a fusion asked for are filled; the others are None.
    """

    pooled: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    levels: list[torch.Tensor] | None = None


def encode_present(
    encoder: Callable[..., Encoded], inputs: Sequence[torch.Tensor], present: torch.Tensor, **wants: bool
) -> Encoded | None:
    """``encoder(*inputs, **wants)`` run on the rows where ``present`` (bool ``[B]``) is True only, its outputs put
    back in place with zeros (mask False) in the other rows; None when no row is present (the encoder never runs)."""
    size, count = present.shape[0], int(present.sum())  # one device sync
    if count == size:
        return encoder(*inputs, **wants)
    if count == 0:
        return None
    rows = present.nonzero().squeeze(1)
    encoded = encoder(*(x.index_select(0, rows) for x in inputs), **wants)

    def place(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.new_zeros((size, *x.shape[1:])).index_copy(0, rows, x)

    levels = None if encoded.levels is None else [place(level) for level in encoded.levels]
    return Encoded(pooled=place(encoded.pooled), tokens=place(encoded.tokens), mask=place(encoded.mask), levels=levels)
