"""The :class:`Encoded` dataclass every encoder returns."""

from __future__ import annotations

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
