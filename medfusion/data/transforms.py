"""Image transforms (torchvision v2) for training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_transform(size: int) -> v2.Compose:
    """A PIL image as the uint8 ``[3, size, size]`` tensor the model sees before scaling: the short side resized to
    ``size``, then centre-cropped (what the decoded-image cache stores)."""
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Resize the short side, centre-crop to ``size``, scale to [0, 1] and normalise."""
    return v2.Compose([*decode_transform(size).transforms, *_scale(mean, std)])


def train_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Random resized crop, flips in both axes (lesions have no canonical orientation), light colour jitter."""
    return v2.Compose([v2.ToImage(), *_augment(size), *_scale(mean, std)])


def cached_transform(
    size: int, augment: bool, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """For a uint8 image of the decoded-image cache (already ``size`` square): scale and normalise, after the
    training augmentations with ``augment`` (random resized crops within the cached square)."""
    return v2.Compose([*(_augment(size) if augment else []), *_scale(mean, std)])


def _augment(size: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
    ]


def _scale(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
