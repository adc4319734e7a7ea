"""Test-time augmentation: deterministic views of the image batch whose softmax outputs are averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

View = Callable[[torch.Tensor], torch.Tensor]

CROP_FRACTION = 0.875


def identity(image: torch.Tensor) -> torch.Tensor:
    return image


def hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1)


def vflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-2)


def rot90(image: torch.Tensor) -> torch.Tensor:
    """A quarter turn counter-clockwise (square images keep their size)."""
    return image.rot90(1, dims=(-2, -1))


def rot270(image: torch.Tensor) -> torch.Tensor:
    return image.rot90(-1, dims=(-2, -1))


def center_crop(image: torch.Tensor) -> torch.Tensor:
    """The central 87.5 % of the image, resized back to the input size (a zoom-in)."""
    height, width = image.shape[-2:]
    crop_h, crop_w = max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = image[..., top : top + crop_h, left : left + crop_w]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


TTA_VIEWS: dict[str, View] = {
    "identity": identity,
    "hflip": hflip,
    "vflip": vflip,
    "rot90": rot90,
    "rot270": rot270,
    "center_crop": center_crop,
}


def check_views(names: Sequence[str]) -> list[str]:
    """The view names, validated against :data:`TTA_VIEWS`."""
    unknown = [name for name in names if name not in TTA_VIEWS]
    if unknown:
        raise ValueError(f"Unknown test-time augmentation {unknown}; choose from: {', '.join(TTA_VIEWS)}")
    return list(names)


def average_log_probs(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_v softmax_v)`` of per-view log-probabilities ``[B, C]``: softmax of it is the averaged
    probability, so it can stand in for logits in losses and metrics."""
    stacked = torch.stack(list(log_probs))
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(log_probs)), device=stacked.device))
