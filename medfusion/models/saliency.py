"""Saliency crops: without any box or mask, the global view's own class-activation map picks the lesion crop.

``model.saliency_crop: {name: local, source: image}`` turns one image modality read at full resolution
(``data.image_size``, e.g. 256) into two: ``source``, the whole image shrunk to ``global_size`` (64), and ``name``,
a square window of side ``window`` (a fraction of the image) cut from the full-resolution image around the peak of
the class-activation map (CAM, Zhou et al. 2016) of the global branch. A two-pass forward: the global encoder runs
first; a linear CAM classifier on the feature map of its stage ``cam_stage`` (timm's ``feature_info`` order, -1 the
last; the default -2 gives a 4 x 4 map of a 64 px view for a ResNet, the last stage only 2 x 2) gives the map
(``cam_head``, trained with cross-entropy beside the main loss: ``train/loss_saliency``); then the crop is cut
(``torchvision.ops.roi_align``) and encoded.

Cost: the same two encoder passes as a global-local pair from boxes (the crop's encoder waits for the global
one) plus one ``[classes x channels]`` product per feature-map cell. The crop is a hard choice: no gradient flows
through where it is cut, and the CAM is as good as the global branch is (random at the start of training).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from medfusion.data.errors import ConfigError


@dataclass(frozen=True)
class SaliencyOptions:
    """``model.saliency_crop`` checked (see the module docstring)."""

    name: str = "local"
    source: str = "image"
    global_size: int = 64
    window: float = 0.25
    cam_stage: int = -2
    loss_weight: float = 1.0


def saliency_options(values: dict[str, Any] | None, specs: dict[str, dict[str, Any]]) -> SaliencyOptions | None:
    """``model.saliency_crop`` as :class:`SaliencyOptions`, or a :class:`ConfigError` naming what is wrong."""
    if values is None:
        return None
    known = list(SaliencyOptions.__dataclass_fields__)
    if not isinstance(values, dict) or set(values) - set(known):
        raise ConfigError(f"model.saliency_crop must be a mapping with keys among {known}, got {values!r}")
    options = SaliencyOptions(**values)
    source = specs.get(options.source)
    if source is None or source["kind"] != "image" or source.get("slices") or source.get("study"):
        plain = [n for n, s in specs.items() if s["kind"] == "image" and not s.get("slices") and not s.get("study")]
        raise ConfigError(
            f"model.saliency_crop.source is {options.source!r}, which is not a plain image modality of the data "
            f"({plain}). Fix: name one of them."
        )
    if options.name in specs:
        raise ConfigError(
            f"model.saliency_crop.name {options.name!r} is already a modality of the data. Fix: give the crop a new "
            "name (e.g. local)."
        )
    if not 0 < options.window <= 1 or options.global_size < 8 or options.loss_weight < 0:
        raise ConfigError(
            f"model.saliency_crop needs 0 < window <= 1, global_size >= 8 and loss_weight >= 0, got {options}"
        )
    return options


class SaliencyCrop(nn.Module):
    """The global view, its class-activation map, and the crop the map picks (see the module docstring).

    Args:
        options: the checked ``model.saliency_crop``.
        encoder: the global view's :class:`~medfusion.encoders.ImageEncoder`; a forward hook on its stage
            ``options.cam_stage`` keeps that stage's feature map.
        num_classes: the classes the CAM classifier predicts.
    """

    def __init__(self, options: SaliencyOptions, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.options = options
        stages = encoder.model.feature_info
        if not -len(stages) <= options.cam_stage < len(stages):
            raise ConfigError(
                f"model.saliency_crop.cam_stage is {options.cam_stage}; {encoder.model_name} has {len(stages)} stages. "
                f"Fix: use -1 (the last) to -{len(stages)}."
            )
        stage = stages[options.cam_stage]
        self.cam_head = nn.Linear(stage["num_chs"], num_classes)
        self._prefix = encoder.num_prefix_tokens
        self._map: torch.Tensor | None = None
        self._watching = False
        encoder.model.get_submodule(stage["module"]).register_forward_hook(self._keep)
        self.last_boxes: torch.Tensor | None = None  # [B, 4] fractions (x0, y0, x1, y1) of the last forward
        self.last_logits: torch.Tensor | None = None

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._watching:
            self._map = output

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Keep the stage's feature map of the encoder calls inside (the global view's, not a shared encoder's
        crop pass)."""
        self._watching = True
        try:
            yield
        finally:
            self._watching = False

    def stage_tokens(self, present: torch.Tensor) -> torch.Tensor:
        """The kept feature map as cells ``[B, N, C]`` (a ViT's prefix tokens dropped; zeros in the rows not
        ``present``, which the encoder skipped); it is let go of."""
        found, self._map = self._map, None
        if found is None:
            raise RuntimeError("the global encoder has not run: SaliencyCrop reads the map of its last forward")
        cells = found.flatten(2).transpose(1, 2) if found.ndim == 4 else found[:, self._prefix :]
        if len(cells) == len(present):
            return cells
        rows = present.nonzero().squeeze(1)
        return cells.new_zeros((len(present), *cells.shape[1:])).index_copy(0, rows, cells)

    def global_view(self, full: torch.Tensor) -> torch.Tensor:
        """``full`` [B, C, H, W] shrunk to ``global_size`` square (antialiased, as the data's resize is)."""
        size = self.options.global_size
        return F.interpolate(full, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def cam(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CAM classifier's logits ``[B, K]`` on the mean of the feature-map cells ``tokens`` [B, N, C] and each
        sample's map of its top class ``[B, h, w]``: with a linear classifier on the mean of the cells, the logits
        are exactly the mean of the map (plus the bias)."""
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ConfigError(
                f"model.saliency_crop needs a square feature map; the global encoder gives {tokens.shape[1]} cells. "
                "Fix: use a CNN, or a ViT on a square view."
            )
        logits = self.cam_head(tokens.mean(dim=1))
        weights = self.cam_head.weight[logits.detach().argmax(dim=1)]  # [B, C]
        maps = torch.einsum("bnc,bc->bn", tokens.detach().float(), weights.detach().float())
        return logits, maps.view(-1, side, side)

    def boxes(self, maps: torch.Tensor) -> torch.Tensor:
        """Per sample the ``window`` square centred on its map's peak cell, shifted inside the image: ``[B, 4]``
        fractions ``(x0, y0, x1, y1)``."""
        side = maps.shape[-1]
        peak = maps.flatten(1).argmax(dim=1)
        centre = torch.stack([(peak % side).float(), torch.div(peak, side, rounding_mode="floor").float()], dim=1)
        half = self.options.window / 2
        centre = ((centre + 0.5) / side).clamp(half, 1 - half)
        return torch.cat([centre - half, centre + half], dim=1)

    def cut(self, full: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The crops of ``full`` [B, C, H, W] at ``boxes`` (fractions), each ``round(window * H)`` pixels square,
        its corner snapped to a whole pixel so that the crop holds the image's own pixels, not interpolated ones
        (a one-pixel texture survives)."""
        height, width = full.shape[-2:]
        size = max(1, round(self.options.window * height))
        corner = (boxes[:, :2] * boxes.new_tensor([width, height])).round()
        corner = torch.minimum(corner, boxes.new_tensor([width - size, height - size]).clamp_min(0))
        rows = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None]
        pixels = torch.cat([rows, corner, corner + size], dim=1).to(full.dtype)
        return roi_align(full, pixels, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)

    def forward(self, full: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The crops of ``full`` chosen by the CAM of the global encoder's last forward (on its view of the rows
        ``present``); the boxes and CAM logits stay in :attr:`last_boxes` and :attr:`last_logits`."""
        self.last_logits, maps = self.cam(self.stage_tokens(present))
        self.last_boxes = self.boxes(maps)
        return self.cut(full, self.last_boxes)
