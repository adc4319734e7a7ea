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


def _attends(model: nn.Module) -> bool:
    """Whether the model's fusion attends between token sequences (``input_kind`` tokens)."""
    fusion = getattr(model, "fusion", None)
    return fusion is not None and fusion.input_kind == "tokens"


@contextmanager
def _storing_attention(model: nn.Module) -> Iterator[None]:
    """Turn the fusion's ``store_attention`` on (when it has a fusion) and restore it afterwards."""
    fusion = getattr(model, "fusion", None)
    if fusion is None:
        yield
        return
    previous = fusion.store_attention
    fusion.store_attention = True
    try:
        yield
    finally:
        fusion.store_attention = previous


def _read_attention(model: nn.Module) -> torch.Tensor | None:
    """The text tokens' attention over the image patches ``[B, Nt, h, w]`` from the fusion's ``attention_maps()``:
    ``text->image`` as it is, or ``image->text`` transposed; None when the fusion kept neither."""
    maps = model.fusion.attention_maps()
    if "text->image" in maps:
        weights = maps["text->image"]
    elif "image->text" in maps:
        weights = maps["image->text"].transpose(-1, -2)  # [B, heads, Ni, Nt] -> [B, heads, Nt, Ni]
    else:
        return None
    weights = weights.float().mean(dim=1)  # average the heads: [B, Nt, Ni]
    h, w = patch_grid(model.image_encoder, weights.shape[-1])
    return weights.reshape(*weights.shape[:2], h, w)


def forward_maps(model: ClassifierModule, batch: dict[str, Any]) -> ForwardMaps:
    """Run ``predict_logits`` once in eval mode without gradients, with attention storage on, and collect the
    maps; the model's modes and ``store_attention`` are restored."""
    with evaluating(model), _storing_attention(model), torch.no_grad():
        logits = model.predict_logits(batch)
    out = ForwardMaps(logits=logits)
    fusion = getattr(model, "fusion", None)
    if _attends(model):
        out.attention = _read_attention(model)
    weights = fusion.modality_weights() if fusion is not None else None
    if weights is not None and "image" in fusion.names:
        out.gate = weights[:, fusion.names.index("image")].float()
    routing = model.head.routing()
    if "combine" in routing:
        out.routing = routing["combine"]
    return out


def attention_maps(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """Cross-modal attention of the fusion's last layer, head-averaged, as ``[B, Nt, h, w]`` on the patch grid.

    The fusion's ``text->image`` map (cross-attention's default, and co-attention's text stream): row ``t`` is
    text token ``t``'s attention over the image patches (sums to 1 over ``h, w``). Cross-attention with
    ``queries: [image]`` keeps ``image->text`` instead: row ``t`` holds, per patch, the weight that patch gives
    token ``t`` (each patch's weights sum to 1 over the real tokens, not over the patches). Padding rows are
    kept; None for models without attention fusion.
    """
    return forward_maps(model, batch).attention if _attends(model) else None


def gate_values(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """The image's weight per sample [B] in a fusion that weighs its inputs (gated, hierarchical:
    ``modality_weights()``); else None."""
    return forward_maps(model, batch).gate


def routing_weights(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """MoE head combine weights [B, K] (zero outside each sample's top-k; rows sum to 1 when top_k > 1); else None."""
    return forward_maps(model, batch).routing
