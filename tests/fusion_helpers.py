"""Helpers of the fusion tests (not a test module): the test sizes, a registered fusion built with them, and random
``(image, text)`` inputs of each input kind (token masks with texts of several lengths and one padded image)."""

from __future__ import annotations

from typing import Any

import torch

from medfusion.fusion import FUSIONS, Fusion, build_fusion

NAMES = FUSIONS.names()
B, OUT = 4, 16
DIMS: dict[str, tuple[Any, Any]] = {"pooled": (24, 20), "tokens": (24, 20), "levels": ([8, 16, 24], [20, 20, 20])}
NI, NT = 5, 7
TEXT_LENGTHS = [7, 3, 5, 1]  # real text tokens per sample
IMAGE_LENGTHS = [5, 5, 4, 5]  # one sample with a padded patch, to test image masks too


def make(name: str, seed: int = 0, **hparams: Any) -> Fusion:
    """Build a registered fusion with the test sizes for its input kind and its default hyperparameters."""
    torch.manual_seed(seed)
    image_dim, text_dim = DIMS[FUSIONS.get(name).input_kind]
    return build_fusion(name, image_dim=image_dim, text_dim=text_dim, out_dim=OUT, **hparams)


def lengths_mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n) < torch.tensor(lengths)[:, None]


def make_inputs(kind: str, seed: int = 1, requires_grad: bool = False) -> tuple[tuple[Any, Any], dict[str, Any]]:
    """Random ``(image, text)`` and keyword masks of the right kind, batch ``B``."""
    g = torch.Generator().manual_seed(seed)
    image_dim, text_dim = DIMS[kind]
    if kind == "pooled":
        args: tuple[Any, Any] = (torch.randn(B, image_dim, generator=g), torch.randn(B, text_dim, generator=g))
    elif kind == "tokens":
        args = (torch.randn(B, NI, image_dim, generator=g), torch.randn(B, NT, text_dim, generator=g))
    else:
        args = ([torch.randn(B, d, generator=g) for d in image_dim], [torch.randn(B, d, generator=g) for d in text_dim])
    for x in leaves(args):
        x.requires_grad_(requires_grad)
    kwargs = {}
    if kind == "tokens":
        kwargs = {"image_mask": lengths_mask(IMAGE_LENGTHS, NI), "text_mask": lengths_mask(TEXT_LENGTHS, NT)}
    return args, kwargs


def leaves(args: Any) -> list[torch.Tensor]:
    """The input tensors of ``args`` (tensors or lists of tensors)."""
    out: list[torch.Tensor] = []
    for a in args:
        out.extend(a if isinstance(a, list) else [a])
    return out
