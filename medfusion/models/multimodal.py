"""The image + text classifier: two encoders, a fusion, a head."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import torch
from torch import nn

from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import ConcatFusion, Fusion
from medfusion.models.base import ClassifierModule, require

FusionFactory = Callable[[Any, Any, int], Fusion]


class MultimodalClassifier(ClassifierModule):
    """Image encoder + text encoder -> fusion -> head.

    The fusion's ``input_kind`` decides what the encoders compute: pooled vectors, token
    sequences with masks, or per-level pooled features.

    Args:
        image_encoder: builds the image encoder (``ImageEncoder``, any timm model).
        text_encoder: builds the text encoder, called with the tokenizer's ``vocab_size``.
        fusion: the fusion, called as ``fusion(image_dim, text_dim, out_dim)``
            (dims are lists for level fusions).
        fusion_dim: the fused feature size fed to the head.
        vocab_size: the datamodule tokenizer's vocabulary size (linked by the CLI).
        **kwargs: see :class:`ClassifierModule` (num_classes, head, loss, lr, ...).
    """

    def __init__(
        self,
        image_encoder: Callable[[], ImageEncoder] = ImageEncoder,
        text_encoder: Callable[[], TextEncoder] = TextEncoder,
        fusion: FusionFactory = ConcatFusion,
        fusion_dim: int = 256,
        vocab_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_encoder = image_encoder()
        self.text_encoder = text_encoder(vocab_size=vocab_size)
        kind = fusion_class(fusion).input_kind
        dims = {
            "pooled": (self.image_encoder.out_dim, self.text_encoder.out_dim),
            "tokens": (self.image_encoder.token_dim, self.text_encoder.token_dim),
            "levels": (self.image_encoder.level_dims, self.text_encoder.level_dims),
        }[kind]
        self.fusion = fusion(*dims, fusion_dim)
        self._build_head(self.fusion.out_dim)

    def encoders(self) -> list[nn.Module]:
        return [self.image_encoder, self.text_encoder]

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        kind = self.fusion.input_kind
        wants = {"tokens": kind == "tokens", "levels": kind == "levels"}
        image = self.image_encoder(require(batch, "image", "MultimodalClassifier"), **wants)
        ids = require(batch, "input_ids", "MultimodalClassifier")
        text = self.text_encoder(ids, batch["attention_mask"], **wants)
        if kind == "tokens":
            return self.fusion(image.tokens, text.tokens, image_mask=image.mask, text_mask=text.mask)
        if kind == "levels":
            return self.fusion(image.levels, text.levels)
        return self.fusion(image.pooled, text.pooled)


def fusion_class(factory: FusionFactory) -> type[Fusion]:
    """The Fusion class behind a factory: a class, a ``functools.partial`` of one (possibly nested,
    as LightningCLI builds them), so the model knows which encoder outputs to size it for."""
    if isinstance(factory, type) and issubclass(factory, Fusion):
        return factory
    if isinstance(factory, partial):
        for candidate in (factory.func, *factory.args):
            with suppress(TypeError):
                return fusion_class(candidate)
    raise TypeError(f"fusion must be a Fusion class or a functools.partial of one, got {factory!r}")
