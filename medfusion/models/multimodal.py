"""The multimodal classifier: one encoder per named modality, a fusion, a head."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.data.errors import ConfigError, check_option
from medfusion.encoders import Encoded, ImageEncoder, TabularEncoder, TextEncoder, encode_present
from medfusion.fusion import ConcatFusion, Fusion
from medfusion.heads.dual_expert import DualExpertHead
from medfusion.losses import clip_loss, disagreement_weight, supcon_loss, symmetric_kl
from medfusion.models.base import ClassifierModule
from medfusion.models.missing import MissingModality, drop_modalities, masked_mean
from medfusion.models.modalities import (
    ImageEncoderFactory,
    Specs,
    TabularEncoderFactory,
    TextEncoderFactory,
    build_encoder,
    present_mask,
    require,
)
from medfusion.models.saliency import SaliencyCrop, saliency_options

FusionFactory = Callable[[dict[str, Any], int], Fusion]


class MultimodalClassifier(ClassifierModule):
    """One encoder per named modality (images, text, tabular) -> fusion -> head.

    ``modalities`` (linked from the data) names the inputs and their kinds; each gets its own encoder from the
    factory of its kind (two image modalities, ``frontal`` and ``lateral``, get two image encoders), keyed by the
    name in :attr:`encoders`. The fusion's ``input_kind`` decides what the encoders compute: pooled vectors,
    token sequences with masks, or per-level pooled features.

    Absent modalities (``present[name]`` False in the batch, e.g. with the datamodule's ``allow_missing`` or
    ``robustness``): each encoder runs only on the samples that have its input (not at all when none has), and
    the others get a learned stand-in (:class:`~medfusion.models.missing.MissingModality`, ``missing[name]``): a
    pooled vector, for token fusions a single real token, for level fusions one vector per level. Auxiliary
    heads and the CLIP loss use only the samples that have their modalities. Under DDP, a batch in which a
    modality is absent for every sample leaves that encoder without gradients: use
    ``strategy: ddp_find_unused_parameters_true`` when that can happen.

    Args:
        image_encoder: builds each image modality's encoder (``ImageEncoder``, any timm model).
        text_encoder: builds the text encoder, called with the tokenizer's ``vocab_size``.
        tabular_encoder: builds the tabular encoder, called with the data's ``num_numeric`` and
            ``cardinalities`` (``TabularEncoder``, the FT-Transformer feature tokenizer).
        fusion: the fusion, called as ``fusion({name: dim, ...}, out_dim)`` (dims are lists for level fusions).
        fusion_dim: the fused feature size fed to the head.
        vocab_size: the text vocabulary size when ``modalities`` does not give it.
        aux_heads: modality-disagreement supervision (two modalities): one head per modality (built like
            ``head``) on the pooled encoder outputs, trained with the fusion; the training loss becomes
            ``a * L_first + b * L_second + c * mean_i(w_i * L_fusion_i)``, ``w_i`` growing with the symmetric KL
            between the two unimodal predictions (:func:`~medfusion.losses.disagreement_weight`). The loss must
            accept ``reduction="none"`` (all medfusion losses do). Predictions use the fused logits only.
        aux_weights: ``(a, b, c)`` above.
        disagreement_clip: the KL is clipped here, so ``w`` lies in ``[1, 1 + clip]``.
        disagreement_warmup_steps: optimizer steps over which the disagreement emphasis ramps in linearly.
        supcon_weight: weight of a supervised contrastive loss (Khosla et al. 2020) on a projection
            (Linear-ReLU-Linear) of the fused features; 0 = off (and no projector).
        supcon_temperature: SupCon temperature.
        clip_weight: weight of a CLIP loss (Radford et al. 2021) between linear projections of the two modalities'
            pooled features (two modalities), with a learnable log-scale initialised at ``log(1/0.07)``; 0 = off.
        projection_dim: output size of the SupCon and CLIP projections.
        dual_expert: a modality name: the head becomes an uncertainty-gated dual expert
            (:class:`~medfusion.heads.dual_expert.DualExpertHead`): one expert (built like ``head``) on the fused
            features, one on this modality's pooled features (e.g. ``local``, the lesion crop), mixed per sample by
            their predictive entropies (the more certain weighs more); each expert is also trained on its own,
            ``expert_loss_weight`` times the mean of their losses. The mean gate is logged as
            ``train/dual_expert_gate_<fused|name>``, and ``medfusion explain`` shows it per sample.
        dual_expert_temperature: the gate's softness (``softmax(-entropy / temperature)``).
        expert_loss_weight: the weight of the experts' own losses.
        share_image_encoder: one image encoder (one set of weights) for every plain image modality, e.g. the
            global view and the lesion crop, or two views; default: one encoder each.
        saliency_crop: a lesion crop without boxes or masks, ``{name: local, source: image, global_size: 64,
            window: 0.25, loss_weight: 1.0}``: the ``source`` images (read at full resolution, ``data.image_size``)
            are shrunk to ``global_size`` for their own encoder, whose class-activation map picks a ``window``
            square of the full image for the ``name`` encoder (a two-pass forward,
            :mod:`medfusion.models.saliency`; logged as ``train/loss_saliency``). Excludes ``data.feature_cache``.
        modality_dropout: in training, each sample that has two modalities or more loses one of them (each
            equally likely, never all) with this probability, marked absent so that the learned stand-ins are
            trained and the model copes with a missing modality at test time; no effect in evaluation. 0 = off.
        **kwargs: see :class:`ClassifierModule` (num_classes, modalities, head, loss, lr, ...).

    Training logs (unweighted) ``train/loss_<name>`` per modality and ``train/disagreement`` (mean KL),
    ``train/disagreement_weight`` (mean ``w``) with ``aux_heads``, ``train/supcon`` and ``train/clip`` when enabled.
    """

    default_modalities: ClassVar[Specs] = {"image": {"kind": "image"}, "text": {"kind": "text"}}

    def __init__(
        self,
        image_encoder: ImageEncoderFactory = ImageEncoder,
        text_encoder: TextEncoderFactory = TextEncoder,
        tabular_encoder: TabularEncoderFactory = TabularEncoder,
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
        dual_expert: str | None = None,
        dual_expert_temperature: float = 1.0,
        expert_loss_weight: float = 1.0,
        share_image_encoder: bool = False,
        saliency_crop: dict[str, Any] | None = None,
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
        self.saliency_options = saliency_options(saliency_crop, self.modality_specs)
        specs = dict(self.modality_specs)
        if self.saliency_options is not None:  # the crop: one more image modality, cut by the model
            specs[self.saliency_options.name] = specs[self.saliency_options.source]
        names = list(specs)
        if len(names) < 2:
            raise ConfigError(
                f"MultimodalClassifier fuses two modalities or more, got {names}. Fix: use ImageClassifier, "
                "TextClassifier or TabularClassifier for one modality, or add modalities to data.modalities."
            )
        if (aux_heads or clip_weight > 0) and len(names) != 2:
            raise ConfigError(
                f"aux_heads and clip_weight compare two modalities; this model has {names}. Fix: turn them off, or "
                "train on two modalities."
            )
        if dual_expert is not None and dual_expert not in names:
            raise ConfigError(
                f"model.dual_expert names {dual_expert!r}, which is not among the modalities {names}. Fix: name one "
                "of them (the expert beside the fused one), or set it to null."
            )
        check_option("model.expert_loss_weight", expert_loss_weight, expert_loss_weight >= 0, "0 or more")
        factories = {"image": image_encoder, "text": text_encoder, "tabular": tabular_encoder}
        factories["slices"], factories["study"] = self._slice_factory, self._study_factory
        shared: dict[str, nn.Module] = {}
        for name, spec in specs.items():
            if spec["kind"] == "text" and spec.get("vocab_size") is None:
                spec = {**spec, "vocab_size": vocab_size}
            same = share_image_encoder and spec["kind"] == "image" and not spec.get("slices") and not spec.get("study")
            if same and "image" in shared:
                self.encoders[name] = shared["image"]  # one module under several names: its weights are shared
                continue
            self.encoders[name] = build_encoder(name, spec, factories)
            if same:
                shared["image"] = self.encoders[name]
        kind = fusion_class(fusion).input_kind
        size = {"pooled": "out_dim", "tokens": "token_dim", "levels": "level_dims"}[kind]
        self.fusion = fusion({name: getattr(encoder, size) for name, encoder in self.encoders.items()}, fusion_dim)
        if dual_expert is None:
            self._build_head(self.fusion.out_dim)
        else:
            dims = (self.fusion.out_dim, self.encoders[dual_expert].out_dim)
            names_ = ("fused", dual_expert)
            expert = DualExpertHead(dims, self.num_classes, self._head_factory, names_, dual_expert_temperature)
            self._build_head(expert.in_dim, expert)
        learn_pooled = kind == "pooled" or aux_heads or clip_weight > 0 or dual_expert is not None
        self.missing = nn.ModuleDict(
            {
                name: MissingModality(
                    encoder.out_dim,
                    learn_pooled=learn_pooled,
                    token_dim=encoder.token_dim if kind == "tokens" else None,
                    level_dims=encoder.level_dims if kind == "levels" else None,
                )
                for name, encoder in self.encoders.items()
            }
        )
        fused_dim = self.fusion.out_dim
        # Optional modules exist only when used, so that DDP finds no parameter without a gradient.
        if aux_heads:
            self.unimodal_heads = nn.ModuleDict(
                {name: self._head_factory(encoder.out_dim, self.num_classes) for name, encoder in self.encoders.items()}
            )
        if supcon_weight > 0:
            self.supcon_projector = nn.Sequential(
                nn.Linear(fused_dim, fused_dim), nn.ReLU(), nn.Linear(fused_dim, projection_dim)
            )
        if clip_weight > 0:
            self.clip_projectors = nn.ModuleDict(
                {name: nn.Linear(encoder.out_dim, projection_dim) for name, encoder in self.encoders.items()}
            )
            self.clip_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if self.saliency_options is not None:
            source = self.encoders[self.saliency_options.source]
            self.saliency = SaliencyCrop(self.saliency_options, source, self.num_classes)

    @property
    def batch_modalities(self) -> list[str]:
        derived = self.saliency_options.name if self.saliency_options is not None else None
        return [name for name in self.encoders if name != derived]

    def feature_fields(self) -> dict[str, bool]:
        kind = self.fusion.input_kind
        return {"tokens": kind == "tokens", "levels": kind == "levels"}

    def encode(self, batch: dict[str, Any]) -> dict[str, Encoded]:
        """Each modality's encoder output, with what the fusion needs (``pooled`` is always there), or the batch's
        cached ``features`` (see ``data.feature_cache``); absent rows hold the learned stand-ins and are never
        encoded."""
        wants = self.feature_fields()
        present = self.present(batch)
        cached = batch.get("features")
        if cached is not None:
            return {name: self.missing[name].fill(Encoded(**cached[name]), present[name], **wants) for name in present}
        if self.saliency_options is not None:
            return self._encode_with_saliency(batch, present, wants)
        return {
            name: self.missing[name].encode(
                encoder, require(batch, name, "MultimodalClassifier"), present[name], **wants
            )
            for name, encoder in self.encoders.items()
        }

    def _encode_with_saliency(
        self, batch: dict[str, Any], present: dict[str, torch.Tensor], wants: dict[str, bool]
    ) -> dict[str, Encoded]:
        """:meth:`encode` with a saliency crop: the global view first (its feature map gives the CAM), then the
        crop it picks from the full-resolution image (:mod:`medfusion.models.saliency`)."""
        crop, source = self.saliency_options.name, self.saliency_options.source
        full = require(batch, source, "MultimodalClassifier")
        encoded = {
            name: self.missing[name].encode(
                encoder, require(batch, name, "MultimodalClassifier"), present[name], **wants
            )
            for name, encoder in self.encoders.items()
            if name not in (crop, source)
        }
        with self.saliency.watching():
            found = encode_present(self.encoders[source], self.saliency.global_view(full), present[source], **wants)
        if found is None:  # no sample has the image: neither view is encoded
            self.saliency.last_logits = self.saliency.last_boxes = None
            return {**encoded, **{n: self.missing[n].fill(None, present[n], **wants) for n in (source, crop)}}
        encoded[source] = self.missing[source].fill(found, present[source], **wants)
        encoded[crop] = self.missing[crop].encode(
            self.encoders[crop], self.saliency(full, present[source]), present[crop], **wants
        )
        return {name: encoded[name] for name in self.encoders}

    def present(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per modality name, which samples of the batch have it: bool ``[B]`` (all True without flags); a saliency
        crop is present where its source is."""
        flags = {name: present_mask(batch, name, self.device) for name in self.encoders}
        if self.saliency_options is not None:
            flags[self.saliency_options.name] = flags[self.saliency_options.name] & flags[self.saliency_options.source]
        return flags

    def fuse(self, encoded: dict[str, Encoded]) -> torch.Tensor:
        """The fused features ``[B, fusion.out_dim]`` of the encoder outputs by name."""
        kind = self.fusion.input_kind
        if kind == "tokens":
            return self.fusion(
                {name: e.tokens for name, e in encoded.items()}, masks={name: e.mask for name, e in encoded.items()}
            )
        if kind == "levels":
            return self.fusion({name: e.levels for name, e in encoded.items()})
        return self.fusion({name: e.pooled for name, e in encoded.items()})

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.features_of(self.encode(batch))

    def features_of(self, encoded: dict[str, Encoded]) -> torch.Tensor:
        """What the head reads: the fused features, and beside them the ``dual_expert`` modality's pooled ones."""
        fused = self.fuse(encoded)
        expert = self.hparams.dual_expert
        return fused if expert is None else torch.cat([fused, encoded[expert].pooled.to(fused.dtype)], dim=-1)

    def training_objective(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The fusion loss (disagreement-weighted with ``aux_heads``) plus the enabled auxiliary objectives."""
        hp = self.hparams
        if self.training and hp.modality_dropout > 0:
            batch = {**batch, "present": drop_modalities(self.present(batch), hp.modality_dropout)}
        present = self.present(batch)
        encoded = self.encode(batch)
        features = self.features_of(encoded)
        fused = features[:, : self.fusion.out_dim]
        logits = self.head(features)
        target = batch["label"]
        terms: dict[str, torch.Tensor] = {}
        names = list(self.encoders)
        if hp.aux_heads:
            first, second = names
            both = present[first] & present[second]
            unimodal = {name: self.unimodal_heads[name](encoded[name].pooled) for name in names}
            for name in names:
                loss = self.criterion(unimodal[name], target, reduction="none")
                terms[f"loss_{name}"] = masked_mean(loss, present[name])
            kl = symmetric_kl(unimodal[first], unimodal[second]).detach() * both  # w = 1 where a modality is absent
            weight = disagreement_weight(
                kl, step=self.global_step, warmup_steps=hp.disagreement_warmup_steps, clip=hp.disagreement_clip
            )
            terms["disagreement"], terms["disagreement_weight"] = masked_mean(kl, both), weight.mean()
            a, b, c = hp.aux_weights
            fusion_loss = (weight * self.criterion(logits, target, reduction="none")).mean()
            loss = a * terms[f"loss_{first}"] + b * terms[f"loss_{second}"] + c * fusion_loss
        else:
            loss = self.criterion(logits, target)
        if isinstance(self.head, DualExpertHead):
            for name, expert_logits in zip(self.head.names, self.head.expert_logits, strict=True):
                terms[f"loss_expert_{name}"] = self.criterion(expert_logits, target)
            loss = loss + hp.expert_loss_weight * sum(terms[f"loss_expert_{n}"] for n in self.head.names) / 2
        if self.saliency_options is not None:
            cam_logits = self.saliency.last_logits
            if cam_logits is None:  # no sample had the image: zero, still connected (DDP expects the gradients)
                terms["loss_saliency"] = 0.0 * sum(p.sum() for p in self.saliency.parameters())
            else:
                cam_loss = F.cross_entropy(cam_logits, target, reduction="none")
                terms["loss_saliency"] = masked_mean(cam_loss, present[self.saliency_options.source])
            loss = loss + self.saliency_options.loss_weight * terms["loss_saliency"]
        if hp.supcon_weight > 0:
            terms["supcon"] = supcon_loss(self.supcon_projector(fused), target, hp.supcon_temperature)
            loss = loss + hp.supcon_weight * terms["supcon"]
        if hp.clip_weight > 0:
            first, second = names
            both = present[first] & present[second]
            first_proj = self.clip_projectors[first](encoded[first].pooled)
            second_proj = self.clip_projectors[second](encoded[second].pooled)
            if bool(both.any()):  # matched pairs only
                terms["clip"] = clip_loss(first_proj[both], second_proj[both], self.clip_logit_scale)
            else:  # no matched pair: zero, still connected to the projections (DDP expects their gradients)
                terms["clip"] = 0.0 * (first_proj.sum() + second_proj.sum() + self.clip_logit_scale)
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
