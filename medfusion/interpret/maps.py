"""What the fusion and the head did on a batch: attention between named modalities, modality weights, routing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medfusion.fusion import Fusion
from medfusion.interpret.gradcam import evaluating, patch_grid
from medfusion.models.base import ClassifierModule


@dataclass
class ForwardMaps:
    """One eval forward of a batch: its ``logits`` [B, C] and, where the model has them, the pairwise attention
    maps (see :func:`attention_maps`) with ``masks`` (bool [B, N] per fusion input, True = real token), the
    modality ``weights`` (per fusion input name, [B]) and the MoE combine weights ``routing`` [B, K]."""

    logits: torch.Tensor
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None
    routing: torch.Tensor | None = None


def _fusion(model: nn.Module) -> Fusion | None:
    fusion = getattr(model, "fusion", None)
    return fusion if isinstance(fusion, Fusion) else None


@contextmanager
def _recording(fusion: Fusion | None) -> Iterator[dict[str, Any]]:
    """Turn the fusion's ``store_attention`` on and record the named inputs and masks it gets (a forward pre-hook,
    removed afterwards, ``store_attention`` restored); yields ``{"inputs", "masks"}`` once the forward ran."""
    seen: dict[str, Any] = {}
    if fusion is None:
        yield seen
        return

    def hook(module: Fusion, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        masks = kwargs.get("masks")
        named = {key: value for key, value in kwargs.items() if key.endswith("_mask")}
        seen["inputs"], seen["masks"] = module.named_inputs(args[0], args[1:], masks, named)

    previous = fusion.store_attention
    fusion.store_attention = True
    handle = fusion.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()
        fusion.store_attention = previous


def _pairs(stored: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, torch.Tensor]:
    """Head-averaged maps ``[B, Nq, Nk]`` per ``"<query>-><key>"`` pair: a map over several inputs'
    concatenated tokens (``"text->image+tabular"``, in that order) is split into one per input; a key that names
    no known inputs is kept whole."""
    pairs: dict[str, torch.Tensor] = {}
    for key, weights in stored.items():
        weights = weights.float().mean(dim=1)
        query, _, context = key.partition("->")
        names = context.split("+")
        if not all(name in counts for name in names) or sum(counts[n] for n in names) != weights.shape[-1]:
            pairs[key] = weights
            continue
        for name, part in zip(names, weights.split([counts[n] for n in names], dim=-1), strict=True):
            pairs[f"{query}->{name}"] = part
    return pairs


def forward_maps(model: ClassifierModule, batch: dict[str, Any]) -> ForwardMaps:
    """Run ``predict_logits`` once in eval mode without gradients, with attention storage on, and collect the
    maps; the model's modes and ``store_attention`` are restored."""
    fusion = _fusion(model)
    with evaluating(model), _recording(fusion) as seen, torch.no_grad():
        logits = model.predict_logits(batch)
    out = ForwardMaps(logits=logits)
    if fusion is None:
        out.routing = model.head.routing().get("combine")
        return out
    if fusion.input_kind == "tokens" and "inputs" in seen:
        inputs = seen["inputs"]
        out.masks = {
            name: torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
            for (name, x), mask in zip(inputs.items(), seen["masks"].values(), strict=True)
        }
        out.attention = _pairs(fusion.attention_maps(), {name: x.shape[1] for name, x in inputs.items()})
    weights = fusion.modality_weights()
    if weights is not None:
        out.weights = {name: weights[:, m].float() for m, name in enumerate(fusion.names)}
    out.routing = model.head.routing().get("combine")
    return out


def patch_map(
    model: ClassifierModule, pairs: dict[str, torch.Tensor], image: str, query: str = "text"
) -> torch.Tensor | None:
    """``query``'s tokens over the patches of image modality ``image``, ``[B, Nq, h, w]``, from pairwise maps
    (:func:`attention_maps`): ``"<query>-><image>"`` as it is, else ``"<image>-><query>"`` transposed; None when
    the fusion kept neither."""
    if f"{query}->{image}" in pairs:
        weights = pairs[f"{query}->{image}"]
    elif f"{image}->{query}" in pairs:
        weights = pairs[f"{image}->{query}"].transpose(-1, -2)  # [B, Ni, Nq] -> [B, Nq, Ni]
    else:
        return None
    h, w = patch_grid(model.encoders[image], weights.shape[-1])
    return weights.reshape(*weights.shape[:2], h, w)


def attention_maps(model: ClassifierModule, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The attention fusion's last-layer maps, head-averaged, one per ``"<query>-><key>"`` pair of inputs:
    ``[B, N_query, N_key]``; empty for models without attention fusion.

    A query that attends over several inputs at once (the N-input cross- and co-attention: one softmax over the
    other inputs' concatenated tokens) gets one map per input, its columns of that softmax: a real query token's
    rows sum to 1 over all its pairs together, and each pair's sum is the share that input got.
    """
    return forward_maps(model, batch).attention


def patch_attention(
    model: ClassifierModule, batch: dict[str, Any], image: str | None = None, query: str = "text"
) -> torch.Tensor | None:
    """The ``query`` tokens' attention over the patches of ``image`` (default: the first image modality),
    head-averaged, ``[B, Nq, h, w]`` on the patch grid; None without such a map.

    From ``text->image`` (cross-attention's default, co-attention's text stream), row ``t`` is text token ``t``'s
    attention over the patches (sums to 1 over ``h, w`` with two inputs; with more, to that image's share).
    Cross-attention with ``queries: [image]`` keeps ``image->text`` instead: row ``t`` holds, per patch, the weight
    that patch gives token ``t`` (each patch's weights sum to 1 over the real tokens). Padding rows are kept.
    """
    images = model.image_modalities
    image = image if image is not None else (images[0] if images else None)
    if image is None:
        return None
    return patch_map(model, attention_maps(model, batch), image, query)


def gate_values(model: ClassifierModule, batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """Each fusion input's weight per sample ``{name: [B]}`` (in fusion order; they sum to 1 per sample) in a
    fusion that weighs its inputs (gated, hierarchical: ``modality_weights()``); else None."""
    return forward_maps(model, batch).weights


def routing_weights(model: ClassifierModule, batch: dict[str, Any]) -> torch.Tensor | None:
    """MoE head combine weights [B, K] (zero outside each sample's top-k; rows sum to 1 when top_k > 1); else None."""
    return forward_maps(model, batch).routing
