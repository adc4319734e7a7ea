"""The :class:`Encoded` dataclass every encoder returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


Inputs = torch.Tensor | Mapping[str, torch.Tensor]


def call_encoder(encoder: Callable[..., Encoded], inputs: Inputs, **wants: bool) -> Encoded:
    """``encoder(inputs)`` for a tensor input (images), ``encoder(**inputs)`` for a dict of them (a text's
    ``input_ids`` and ``attention_mask``, a tabular ``numeric``, ``numeric_missing`` and ``categorical``)."""
    if isinstance(inputs, Mapping):
        return encoder(**inputs, **wants)
    return encoder(inputs, **wants)


def encode_present(
    encoder: Callable[..., Encoded], inputs: Inputs, present: torch.Tensor, **wants: bool
) -> Encoded | None:
    """:func:`call_encoder` on the rows where ``present`` (bool ``[B]``) is True only, its outputs put back in place
    with zeros (mask False) in the other rows; None when no row is present (the encoder never runs). While
    ``torch.export`` traces (ONNX export), every row is encoded: rows are independent, and the caller's stand-ins
    replace the absent ones, so the outputs are the same without a data-dependent branch."""
    if torch.compiler.is_exporting():
        return call_encoder(encoder, inputs, **wants)
    size, count = present.shape[0], int(present.sum())  # one device sync
    if count == size:
        return call_encoder(encoder, inputs, **wants)
    if count == 0:
        return None
    rows = present.nonzero().squeeze(1)
    if isinstance(inputs, Mapping):
        selected: Inputs = {key: value.index_select(0, rows) for key, value in inputs.items()}
    else:
        selected = inputs.index_select(0, rows)
    encoded = call_encoder(encoder, selected, **wants)

    def place(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.new_zeros((size, *x.shape[1:])).index_copy(0, rows, x)

    levels = None if encoded.levels is None else [place(level) for level in encoded.levels]
    return Encoded(pooled=place(encoded.pooled), tokens=place(encoded.tokens), mask=place(encoded.mask), levels=levels)
