"""The image + text classifier: two encoders, a fusion, a head."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import torch
from torch import nn

from medfusion.encoders import Encoded, ImageEncoder, TextEncoder
from medfusion.fusion import ConcatFusion, Fusion
from medfusion.losses import clip_loss, disagreement_weight, supcon_loss, symmetric_kl
from medfusion.models.base import ClassifierModule, require
from medfusion.models.missing import MissingModality, drop_modalities, masked_mean, present_mask

FusionFactory = Callable[[dict[str, Any], int], Fusion]


class MultimodalClassifier(ClassifierModule):
    """Image encoder + text encoder -> fusion -> head.

    The fusion's ``input_kind`` decides what the encoders compute: pooled vectors, token
    sequences with masks, or per-level pooled features.

    Absent modalities (``image_present``/``text_present`` False in the batch, e.g. with the datamodule's
    ``allow_missing`` or ``robustness``): each encoder runs only on the samples that have its input (not at
    all when none has), and the others get a learned stand-in (:class:`~medfusion.models.missing.MissingModality`,
    ``missing_image``/``missing_text``): a pooled vector, for token fusions a single real token, for level
    fusions one vector per level. Auxiliary heads and the CLIP loss use only the samples that have their
    modalities. Under DDP, a batch in which a modality is absent for every sample leaves that encoder without
    gradients: use ``strategy: ddp_find_unused_parameters_true`` when that can happen.

    Args:
        image_encoder: builds the image encoder (``ImageEncoder``, any timm model).
        text_encoder: builds the text encoder, called with the tokenizer's ``vocab_size``.
        fusion: the fusion, called as ``fusion({"image": image_dim, "text": text_dim}, out_dim)``
            (dims are lists for level fusions).
        fusion_dim: the fused feature size fed to the head.
        vocab_size: the datamodule tokenizer's vocabulary size (linked by the CLI).
        aux_heads: modality-disagreement supervision: image-only and text-only heads (built like ``head``) on
            the pooled encoder outputs, trained with the fusion; the training loss becomes
            ``a * L_image + b * L_text + c * mean_i(w_i * L_fusion_i)``, ``w_i`` growing with the symmetric KL
            between the two unimodal predictions (:func:`~medfusion.losses.disagreement_weight`). The loss must
            accept ``reduction="none"`` (all medfusion losses do). Predictions use the fused logits only.
        aux_weights: ``(a, b, c)`` above.
        disagreement_clip: the KL is clipped here, so ``w`` lies in ``[1, 1 + clip]``.
        disagreement_warmup_steps: optimizer steps over which the disagreement emphasis ramps in linearly.
        supcon_weight: weight of a supervised contrastive loss (Khosla et al. 2020) on a projection
            (Linear-ReLU-Linear) of the fused features; 0 = off (and no projector).
        supcon_temperature: SupCon temperature.
        clip_weight: weight of a CLIP loss (Radford et al. 2021) between linear projections of the pooled image
            and text features, with a learnable log-scale initialised at ``log(1/0.07)``; 0 = off.
        projection_dim: output size of the SupCon and CLIP projections.
        modality_dropout: in training, each sample that has both modalities loses its image or its text (equally
            likely, never both) with this probability, marked absent so that the learned stand-ins are trained
            and the model copes with a missing modality at test time; no effect in evaluation. 0 = off.
        **kwargs: see :class:`ClassifierModule` (num_classes, head, loss, lr, ...).

    Training logs (unweighted) ``train/loss_image``, ``train/loss_text``, ``train/disagreement`` (mean KL),
    ``train/disagreement_weight`` (mean ``w``), ``train/supcon`` and ``train/clip`` when enabled.
    """

    def __init__(
        self,
        image_encoder: Callable[[], ImageEncoder] = ImageEncoder,
        text_encoder: Callable[[], TextEncoder] = TextEncoder,
        fusion: FusionFactory = ConcatFusion,
        fusion_dim: int = 256,
        vocab_size: int | None = None,
        aux_heads: bool = False,
        aux_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        disagreement_clip: float = 1.0,
        disagreement_warmup_steps: int = 0,
        supcon_weight: float = 0.0,
        supcon_temperature: float = 0.07,
        clip_weight: float = 0.0,
        projection_dim: int = 128,
        modality_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        if disagreement_clip <= 0 or disagreement_warmup_steps < 0:
            raise ValueError(
                f"need disagreement_clip > 0 and disagreement_warmup_steps >= 0, got "
                f"{disagreement_clip} and {disagreement_warmup_steps}"
            )
        if len(aux_weights) != 3 or min(aux_weights) < 0 or supcon_weight < 0 or clip_weight < 0:
            raise ValueError(
                f"aux_weights must be 3 numbers >= 0 and supcon_weight, clip_weight >= 0; "
                f"got {aux_weights}, {supcon_weight}, {clip_weight}"
            )
        if aux_heads and "reduction" not in inspect.signature(self.criterion.forward).parameters:
            raise ValueError(
                f"aux_heads weights the fusion loss per sample, so the loss must accept reduction='none'; "
                f"{type(self.criterion).__name__} does not"
            )
        self.image_encoder = image_encoder()
        self.text_encoder = text_encoder(vocab_size=vocab_size)
        kind = fusion_class(fusion).input_kind
        size = {"pooled": "out_dim", "tokens": "token_dim", "levels": "level_dims"}[kind]
        dims = {"image": getattr(self.image_encoder, size), "text": getattr(self.text_encoder, size)}
        self.fusion = fusion(dims, fusion_dim)
        self._build_head(self.fusion.out_dim)
        learn_pooled = kind == "pooled" or aux_heads or clip_weight > 0
        for name, encoder in (("missing_image", self.image_encoder), ("missing_text", self.text_encoder)):
            missing = MissingModality(
                encoder.out_dim,
                learn_pooled=learn_pooled,
                token_dim=encoder.token_dim if kind == "tokens" else None,
                level_dims=encoder.level_dims if kind == "levels" else None,
            )
            self.add_module(name, missing)
        image_dim, text_dim, fused_dim = self.image_encoder.out_dim, self.text_encoder.out_dim, self.fusion.out_dim
        # Optional modules exist only when used, so that DDP finds no parameter without a gradient.
        if aux_heads:
            self.image_head = self._head_factory(image_dim, self.num_classes)
            self.text_head = self._head_factory(text_dim, self.num_classes)
        if supcon_weight > 0:
            self.supcon_projector = nn.Sequential(
                nn.Linear(fused_dim, fused_dim), nn.ReLU(), nn.Linear(fused_dim, projection_dim)
            )
        if clip_weight > 0:
            self.clip_image_projector = nn.Linear(image_dim, projection_dim)
            self.clip_text_projector = nn.Linear(text_dim, projection_dim)
            self.clip_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encoders(self) -> list[nn.Module]:
        return [self.image_encoder, self.text_encoder]

    def feature_encoders(self) -> dict[str, nn.Module]:
        return {"image": self.image_encoder, "text": self.text_encoder}

    def feature_fields(self) -> dict[str, bool]:
        kind = self.fusion.input_kind
        return {"tokens": kind == "tokens", "levels": kind == "levels"}

    def encode(self, batch: dict[str, Any]) -> tuple[Encoded, Encoded]:
        """Both encoders' outputs, with what the fusion needs (``pooled`` is always there), or the batch's cached
        ``features`` (see ``data.feature_cache``); absent rows hold the learned stand-ins and are never encoded."""
        wants = self.feature_fields()
        image_present, text_present = self.present(batch)
        cached = batch.get("features")
        if cached is not None:
            image = self.missing_image.fill(Encoded(**cached["image"]), image_present, **wants)
            return image, self.missing_text.fill(Encoded(**cached["text"]), text_present, **wants)
        images = require(batch, "image", "MultimodalClassifier")
        ids = require(batch, "input_ids", "MultimodalClassifier")
        image = self.missing_image.encode(self.image_encoder, [images], image_present, **wants)
        text = self.missing_text.encode(self.text_encoder, [ids, batch["attention_mask"]], text_present, **wants)
        return image, text

    def present(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_present, text_present)`` bool ``[B]`` of a batch (all True where it has no flags)."""
        size = len(batch["label"] if "label" in batch else require(batch, "input_ids", "MultimodalClassifier"))
        return present_mask(batch, "image", size, self.device), present_mask(batch, "text", size, self.device)

    def fuse(self, image: Encoded, text: Encoded) -> torch.Tensor:
        """The fused features ``[B, fusion.out_dim]`` of two encoder outputs."""
        kind = self.fusion.input_kind
        if kind == "tokens":
            return self.fusion(
                {"image": image.tokens, "text": text.tokens}, masks={"image": image.mask, "text": text.mask}
            )
        if kind == "levels":
            return self.fusion({"image": image.levels, "text": text.levels})
        return self.fusion({"image": image.pooled, "text": text.pooled})

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.fuse(*self.encode(batch))

    def training_objective(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The fusion loss (disagreement-weighted with ``aux_heads``) plus the enabled auxiliary objectives."""
        hp = self.hparams
        if self.training and hp.modality_dropout > 0:
            image_present, text_present = drop_modalities(*self.present(batch), hp.modality_dropout)
            batch = {**batch, "image_present": image_present, "text_present": text_present}
        image_present, text_present = self.present(batch)
        both = image_present & text_present
        image, text = self.encode(batch)
        fused = self.fuse(image, text)
        logits = self.head(fused)
        target = batch["label"]
        terms: dict[str, torch.Tensor] = {}
        if hp.aux_heads:
            image_logits, text_logits = self.image_head(image.pooled), self.text_head(text.pooled)
            terms["loss_image"] = masked_mean(self.criterion(image_logits, target, reduction="none"), image_present)
            terms["loss_text"] = masked_mean(self.criterion(text_logits, target, reduction="none"), text_present)
            kl = symmetric_kl(image_logits, text_logits).detach() * both  # w = 1 where a modality is absent
            weight = disagreement_weight(
                kl, step=self.global_step, warmup_steps=hp.disagreement_warmup_steps, clip=hp.disagreement_clip
            )
            terms["disagreement"], terms["disagreement_weight"] = masked_mean(kl, both), weight.mean()
            a, b, c = hp.aux_weights
            fusion_loss = (weight * self.criterion(logits, target, reduction="none")).mean()
            loss = a * terms["loss_image"] + b * terms["loss_text"] + c * fusion_loss
        else:
            loss = self.criterion(logits, target)
        if hp.supcon_weight > 0:
            terms["supcon"] = supcon_loss(self.supcon_projector(fused), target, hp.supcon_temperature)
            loss = loss + hp.supcon_weight * terms["supcon"]
        if hp.clip_weight > 0:
            image_proj = self.clip_image_projector(image.pooled)
            text_proj = self.clip_text_projector(text.pooled)
            if bool(both.any()):  # matched pairs only
                terms["clip"] = clip_loss(image_proj[both], text_proj[both], self.clip_logit_scale)
            else:  # no matched pair: zero, still connected to the projections (DDP expects their gradients)
                terms["clip"] = 0.0 * (image_proj.sum() + text_proj.sum() + self.clip_logit_scale)
            loss = loss + hp.clip_weight * terms["clip"]
        return logits, loss, terms


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
