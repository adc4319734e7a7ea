"""Single-modality classifiers: image-only and text-only baselines on the same pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.models.base import ClassifierModule, require, require_present


class ImageClassifier(ClassifierModule):
    """Image encoder (timm) -> head.

    Args:
        image_encoder: builds the encoder, e.g. ``ImageEncoder`` with ``model_name: resnet18``.
        **kwargs: see :class:`ClassifierModule` (num_classes, head, loss, lr, ...).
    """

    def __init__(self, image_encoder: Callable[[], ImageEncoder] = ImageEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_encoder = image_encoder()
        self._build_head(self.image_encoder.out_dim)

    def encoders(self) -> list[nn.Module]:
        return [self.image_encoder]

    def feature_encoders(self) -> dict[str, nn.Module]:
        return {"image": self.image_encoder}

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        require_present(batch, "image", "ImageClassifier")
        if "features" in batch:  # from the feature cache
            return batch["features"]["image"]["pooled"]
        return self.image_encoder(require(batch, "image", "ImageClassifier")).pooled


class TextClassifier(ClassifierModule):
    """Text encoder (transformers) -> head.

    Args:
        text_encoder: builds the encoder, called with the tokenizer's ``vocab_size``.
        vocab_size: the datamodule tokenizer's vocabulary size (linked by the CLI).
        **kwargs: see :class:`ClassifierModule`.
    """

    def __init__(
        self, text_encoder: Callable[[], TextEncoder] = TextEncoder, vocab_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.text_encoder = text_encoder(vocab_size=vocab_size)
        self._build_head(self.text_encoder.out_dim)

    def encoders(self) -> list[nn.Module]:
        return [self.text_encoder]

    def feature_encoders(self) -> dict[str, nn.Module]:
        return {"text": self.text_encoder}

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        require_present(batch, "text", "TextClassifier")
        if "features" in batch:  # from the feature cache
            return batch["features"]["text"]["pooled"]
        return self.text_encoder(require(batch, "input_ids", "TextClassifier"), batch["attention_mask"]).pooled
