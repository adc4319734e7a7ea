"""Grad-CAM (Selvaraju et al. 2017) of any medfusion classifier with an image encoder, via ``grad-cam``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from medfusion.encoders import ImageEncoder
from medfusion.models.base import ClassifierModule
from medfusion.models.modalities import require


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, then give every sub-module back the mode it had (frozen encoders included)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def patch_grid(encoder: ImageEncoder, num_tokens: int) -> tuple[int, int]:
    """The ``(h, w)`` layout of ``num_tokens`` image patches: the ViT's ``patch_embed.grid_size`` when it
    matches, else a square grid (a ``ValueError`` when ``num_tokens`` is not a square)."""
    grid = getattr(getattr(encoder.model, "patch_embed", None), "grid_size", None)
    if grid is not None and grid[0] * grid[1] == num_tokens:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"{num_tokens} image tokens of {encoder.model_name} do not form a square patch grid: use square images"
        )
    return side, side


def _tokens_to_map(encoder: ImageEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """ViT tokens [B, prefix + N, D] -> patch map [B, D, h, w]."""
    patches = tokens[:, encoder.num_prefix_tokens :]
    h, w = patch_grid(encoder, patches.shape[1])
    return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)


def _nhwc_to_nchw(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 3, 1, 2)


def gradcam_target(encoder: ImageEncoder) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The layer Grad-CAM hooks and the transform of its output to ``[B, C, h, w]`` (None when already so).

    ViTs (token sequences): ``blocks[-1].norm1``, the grad-cam docs' choice, with a transform that drops the
    ``num_prefix_tokens`` and lays the patches on their grid. CNNs: the last ``feature_info`` stage (channels-last
    ones such as Swin are permuted).
    """
    model = encoder.model
    blocks = getattr(model, "blocks", None)
    if (
        hasattr(model, "patch_embed")
        and hasattr(model, "num_prefix_tokens")
        and isinstance(blocks, nn.Sequential | nn.ModuleList)
        and len(blocks) > 0
        and hasattr(blocks[-1], "norm1")
    ):
        return blocks[-1].norm1, partial(_tokens_to_map, encoder)
    output_fmt = getattr(model, "output_fmt", "NCHW")
    feature_info = getattr(model, "feature_info", None)
    if feature_info and output_fmt in ("NCHW", "NHWC"):
        name = feature_info[-1]["module"]
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{encoder.model_name}: its last feature stage {name!r} is not a sub-module") from None
        return layer, _nhwc_to_nchw if output_fmt == "NHWC" else None
    raise ValueError(
        f"No Grad-CAM target layer for {encoder.model_name}: neither a ViT (blocks[-1].norm1) nor a model whose "
        f"timm feature_info gives a spatial last stage"
    )


class _ImageToLogits(nn.Module):
    """``image -> logits`` of a classifier on a fixed batch, the image of modality ``name`` replaced (what grad-cam
    calls)."""

    def __init__(self, model: ClassifierModule, batch: dict[str, Any], name: str) -> None:
        super().__init__()
        self.model = model
        self.batch = batch
        self.name = name

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.predict_logits({**self.batch, self.name: image})


def _rows(value: Any, rows: torch.Tensor) -> Any:
    """The samples ``rows`` of a batch entry: tensors and lists indexed on their first axis, dicts entry by entry."""
    if torch.is_tensor(value) and value.ndim > 0:
        return value[rows.to(value.device)]
    if isinstance(value, dict):
        return {key: _rows(item, rows) for key, item in value.items()}
    if isinstance(value, list):
        return [value[i] for i in rows.tolist()]
    return value


def gradcam(
    model: ClassifierModule, batch: dict[str, Any], targets: Sequence[int] | None = None, modality: str | None = None
) -> torch.Tensor:
    """Grad-CAM maps ``[B, H, W]`` in [0, 1] at the input resolution (on the CPU), each normalised to its maximum.

    Explains ``targets`` (one class per sample; default: the predicted class) of the logits ``predict_logits``
    gives in eval mode, through the image encoder of ``modality`` (an image modality name; default: the model's
    first) and its :func:`gradcam_target`. Samples without that image (``present`` False) get a zero map. Works
    with frozen encoders and inside ``torch.no_grad()`` (not ``torch.inference_mode()``); the model's modes,
    ``requires_grad`` flags and ``.grad`` are left as they were, and no hook remains.
    """
    images = model.image_modalities
    name = modality if modality is not None else (images[0] if images else None)
    encoder = model.encoders[name] if name is not None and name in model.encoders else None
    if not isinstance(encoder, ImageEncoder):
        what = f"no image modality {modality!r}" if modality else "no image encoder"
        raise ValueError(f"{type(model).__name__} has {what} to explain with Grad-CAM (image modalities: {images})")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Grad-CAM needs gradients: call it outside torch.inference_mode() (torch.no_grad() is fine)")
    image = require(batch, name, type(model).__name__)
    if targets is not None and len(targets) != len(image):
        raise ValueError(f"{len(targets)} targets for a batch of {len(image)} images")
    present = (batch.get("present") or {}).get(name)
    if present is not None and not bool(present.all()):
        # the encoder sees the present rows only, so Grad-CAM runs on those samples alone
        rows = present.cpu().bool().nonzero().squeeze(1)
        maps = torch.zeros(len(image), *image.shape[2:])
        if len(rows):
            chosen = None if targets is None else [targets[i] for i in rows.tolist()]
            maps[rows] = gradcam(model, _rows(batch, rows), chosen, name)
        return maps
    layer, reshape = gradcam_target(encoder)
    params = list(model.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    with evaluating(model):
        # grad-cam's constructor puts the model in eval mode and its forward zeroes the parameters' gradients.
        cam = GradCAM(model=_ImageToLogits(model, batch, name), target_layers=[layer], reshape_transform=reshape)
        try:
            model.requires_grad_(False)  # gradients w.r.t. activations only: they flow from the input image
            with torch.enable_grad():
                maps = cam(
                    input_tensor=image.detach().clone().requires_grad_(True),  # a clone: also from inference tensors
                    targets=None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets],
                )
        finally:
            # not ``with cam:`` -- grad-cam's __exit__ swallows IndexErrors raised inside the block
            cam.activations_and_grads.release()
            for p, requires_grad, grad in saved:
                p.requires_grad_(requires_grad)
                p.grad = grad
    return torch.from_numpy(maps)
