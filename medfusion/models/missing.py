"""Absent modalities: encoding only the samples that have one, learned stand-ins for the others, modality dropout."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medfusion.encoders import Encoded, encode_present
from medfusion.encoders.encoded import Inputs


def drop_modalities(present: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """Modality dropout: each sample that has two modalities or more loses one of them (each present one equally
    likely; never all) with probability ``p``. ``present`` maps names to bool ``[B]``; returns the new flags."""
    names = list(present)
    stacked = torch.stack([present[name] for name in names], dim=1)  # [B, M]
    drop = (stacked.sum(1) >= 2) & (torch.rand(stacked.shape[0], device=stacked.device) < p)
    # one present modality per sample, uniformly: the largest random score among the present ones
    scores = torch.rand(stacked.shape, device=stacked.device).masked_fill(~stacked, -1.0)
    chosen = torch.zeros_like(stacked).scatter_(1, scores.argmax(1, keepdim=True), True)
    kept = stacked & ~(chosen & drop[:, None])
    return {name: kept[:, i] for i, name in enumerate(names)}


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample ``values`` [B] over the samples where ``keep`` [B] is True (0 when none is)."""
    keep = keep.to(values.dtype)
    return (values * keep).sum() / keep.sum().clamp_min(1.0)


def _learned(dim: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(dim), std=0.02))


class MissingModality(nn.Module):
    """Learned stand-ins for one modality where a sample lacks it, in the forms a fusion consumes.

    ``pooled`` ``[D]`` replaces the pooled vector; ``token`` ``[D_tok]`` becomes the single real token
    (mask True) of an absent sample for token fusions; ``levels`` one ``[D_l]`` per level for level fusions.
    Each exists only when asked for (so that no parameter goes without a gradient under DDP); absent rows of a
    form without a stand-in are zeros.

    Args:
        pooled_dim: size of the pooled features (always needed to shape them).
        learn_pooled: learn a pooled stand-in (when the pooled features are used).
        token_dim: size of the tokens, for token fusions.
        level_dims: sizes of the levels, for level fusions.
    """

    def __init__(
        self,
        pooled_dim: int,
        learn_pooled: bool = True,
        token_dim: int | None = None,
        level_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.pooled_dim = pooled_dim
        self.pooled = _learned(pooled_dim) if learn_pooled else None
        self.token = _learned(token_dim) if token_dim else None
        self.levels = nn.ParameterList([_learned(d) for d in level_dims]) if level_dims else None

    def encode(
        self,
        encoder: Callable[..., Encoded],
        inputs: Inputs,
        present: torch.Tensor,
        **wants: bool,
    ) -> Encoded:
        """The encoder (see :func:`~medfusion.encoders.call_encoder`) run on the present rows only (not at all when
        none is present), with the absent rows filled by the stand-ins. ``present`` is bool ``[B]``."""
        encoded = encode_present(encoder, inputs, present, **wants)
        return self.fill(encoded, present, tokens=wants.get("tokens", False), levels=wants.get("levels", False))

    def fill(self, encoded: Encoded | None, present: torch.Tensor, *, tokens: bool, levels: bool) -> Encoded:
        """Replace the absent rows (``present`` False) of ``encoded`` (None: every row absent) by the stand-ins."""
        size, device = present.shape[0], present.device
        if encoded is None:
            pooled = torch.zeros(size, self.pooled_dim, device=device)
            encoded = Encoded(pooled=pooled)
            if tokens:
                encoded.tokens = torch.zeros(size, 1, self.token.shape[0], device=device)
                encoded.mask = torch.zeros(size, 1, dtype=torch.bool, device=device)
            if levels:
                encoded.levels = [torch.zeros(size, p.shape[0], device=device) for p in self.levels]
        rows = present[:, None]
        out = Encoded(pooled=_where(rows, encoded.pooled, self.pooled))
        if tokens:
            first = torch.zeros(encoded.mask.shape[1], dtype=torch.bool, device=device)
            first[0] = True  # an absent sample: one real token, the learned one, then padding
            token = torch.where(first[:, None], self.token.to(encoded.tokens.dtype), 0.0)
            out.tokens = torch.where(rows[..., None], encoded.tokens, token)
            out.mask = (rows & encoded.mask) | (~rows & first)  # logic, not a where on bools (ONNX Runtime has none)
        if levels:
            out.levels = [_where(rows, level, p) for level, p in zip(encoded.levels, self.levels, strict=True)]
        return out


def _where(rows: torch.Tensor, values: torch.Tensor, stand_in: torch.Tensor | None) -> torch.Tensor:
    """``values`` where ``rows`` is True, else ``stand_in`` (else zeros)."""
    fill = torch.zeros((), dtype=values.dtype, device=values.device) if stand_in is None else stand_in
    return torch.where(rows, values, fill.to(values.dtype))
