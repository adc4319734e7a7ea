"""Single-modality classifiers: the image-only, text-only and tabular-only baselines on the same pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from medfusion.data.errors import ConfigError
from medfusion.encoders import ImageEncoder, TabularEncoder, TextEncoder, call_encoder
from medfusion.models.base import ClassifierModule
from medfusion.models.modalities import (
    ImageEncoderFactory,
    Specs,
    TabularEncoderFactory,
    TextEncoderFactory,
    build_encoder,
    require,
    require_present,
)


class SingleModalityClassifier(ClassifierModule):
    """One modality's encoder -> head. ``modalities`` (linked from the data) must hold one modality of the
    subclass's :attr:`kind`; its name keys :attr:`encoders` and the batch entry the model reads."""

    kind = ""

    def _build(self, encoder_factory: Callable[..., nn.Module], **sizes: Any) -> None:
        kinds = {name: spec["kind"] for name, spec in self.modality_specs.items()}
        if len(kinds) != 1 or next(iter(kinds.values())) != self.kind:
            raise ConfigError(
                f"{type(self).__name__} takes one {self.kind} modality; the data has {kinds}. Fix: set "
                f"data.modalities to one {self.kind} modality, or use MultimodalClassifier for several."
            )
        self.modality = name = next(iter(kinds))
        spec = dict(self.modality_specs[name])
        spec.update({key: value for key, value in sizes.items() if spec.get(key) is None})  # the data's sizes first
        self.encoders[name] = build_encoder(
            name, spec, {self.kind: encoder_factory, "slices": self._slice_factory, "study": self._study_factory}
        )
        self._build_head(self.encoders[name].out_dim)

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        model = type(self).__name__
        require_present(batch, self.modality, model)
        if "features" in batch:  # from the feature cache
            return batch["features"][self.modality]["pooled"]
        return call_encoder(self.encoders[self.modality], require(batch, self.modality, model)).pooled


class ImageClassifier(SingleModalityClassifier):
    """Image encoder (timm) -> head.

    Args:
        image_encoder: builds the encoder, e.g. ``ImageEncoder`` with ``model_name: resnet18``.
        **kwargs: see :class:`ClassifierModule` (num_classes, head, loss, lr, ...).
    """

    kind = "image"
    default_modalities: ClassVar[Specs] = {"image": {"kind": "image"}}

    def __init__(self, image_encoder: ImageEncoderFactory = ImageEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build(image_encoder)


class TextClassifier(SingleModalityClassifier):
    """Text encoder (transformers) -> head.

    Args:
        text_encoder: builds the encoder, called with the tokenizer's ``vocab_size``.
        vocab_size: the tokenizer's vocabulary size when ``modalities`` does not give it.
        **kwargs: see :class:`ClassifierModule`.
    """

    kind = "text"
    default_modalities: ClassVar[Specs] = {"text": {"kind": "text"}}

    def __init__(
        self, text_encoder: TextEncoderFactory = TextEncoder, vocab_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._build(text_encoder, vocab_size=vocab_size)


class TabularClassifier(SingleModalityClassifier):
    """Tabular encoder (FT-Transformer feature tokens and an MLP) -> head: the clinical-variables baseline.

    Args:
        tabular_encoder: builds the encoder, called with the data's ``num_numeric`` and ``cardinalities``.
        **kwargs: see :class:`ClassifierModule`; ``modalities`` must give the tabular sizes (the CLI links them).
    """

    kind = "tabular"
    default_modalities: ClassVar[Specs] = {"tabular": {"kind": "tabular"}}

    def __init__(self, tabular_encoder: TabularEncoderFactory = TabularEncoder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build(tabular_encoder)
