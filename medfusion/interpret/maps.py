"""What the fusion and the head did on a batch: cross-modal attention, modality gates, expert routing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medfusion.interpret.gradcam import evaluating, patch_grid
from medfusion.models.base import ClassifierModule


@dataclass
class ForwardMaps:
    """One eval forward of a batch: its logits [B, C] and, where the model has them, the attention maps
    [B, Nt, h, w] (see :func:`attention_maps`), mean gates [B] and MoE combine weights [B, K]."""

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    routing: torch.Tensor | None = None


def _stores_attention(model: nn.Module) -> bool:
    return hasattr(getattr(model, "fusion", None), "store_attention")


def _has_gate(model: nn.Module) -> bool:
    return hasattr(getattr(model, "fusion", None), "last_gate")


def _has_routing(model: nn.Module) -> bool:
    return hasattr(getattr(model, "head", None), "last_routing")


@contextmanager
def _storing_attention(model: nn.Module) -> Iterator[None]:
    """Turn the fusion's ``store_attention`` on (when it has one) and restore it afterwards."""
    if not _stores_attention(model):
        yield
        return
    fusion = model.fusion
    previous = fusion.store_attention
    fusion.store_attention = True
    try:
        yield
    finally:
        fusion.store_attention = previous


def _read_attention(model: nn.Module) -> torch.Tensor:
    fusion = model.fusion
    stored = fusion.last_attention
    if isinstance(stored, dict):  # co-attention
        weights = stored["text_to_image"]
    elif getattr(fusion, "direction", "text_to_image") == "image_to_text":
        weights = stored.transpose(-1, -2)  # [B, heads, Ni, Nt] -> [B, heads, Nt, Ni]
    else:
        weights = stored
    weights = weights.float().mean(dim=1)  # average the heads: [B, Nt, Ni]
    h, w = patch_grid(model.image_encoder, weights.shape[-1])
    return weights.reshape(*weights.shape[:2], h, w)


def forward_maps(model: ClassifierModule, batch: dict[str, Any]) -> ForwardMaps:
    """Run ``predict_logits`` once in eval mode without gradients, with attention storage on, and collect the
    maps; the model's modes and ``store_attention`` are restored."""
    with evaluating(model), _storing_attention(model), torch.no_grad():
        logits = model.predict_logits(batch)
    out = ForwardMaps(logits=logits)
    if _stores_attention(model):
        out.attention = _read_attention(model)
    if _has_gate(model):
        out.gate = model.fusion.last_gate.float().flatten(1).mean(dim=1)
    if _has_routing(model):
        out.routing = model.head.last_routing["combine"]
    return out


def attention_maps(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """Cross-modal attention of the fusion's last layer, head-averaged, as ``[B, Nt, h, w]`` on the patch grid.

    ``text_to_image`` (cross-attention's default, and co-attention's text stream): row ``t`` is text token
    ``t``'s attention over the image patches (sums to 1 over ``h, w``). Cross-attention with
    ``image_to_text``: row ``t`` holds, per patch, the weight that patch gives token ``t`` (each patch's
    weights sum to 1 over the real tokens, not over the patches). Padding rows are kept; None for models
    without attention fusion.
    """
    return forward_maps(model, batch).attention if _stores_attention(model) else None


def gate_values(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """Mean gate per sample [B] of a gated (or hierarchical) fusion: the share given to the image; else None."""
    return forward_maps(model, batch).gate if _has_gate(model) else None


def routing_weights(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """MoE head combine weights [B, K] (zero outside each sample's top-k; rows sum to 1 when top_k > 1); else None."""
    return forward_maps(model, batch).routing if _has_routing(model) else None
