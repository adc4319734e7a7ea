"""Multi-layer perceptron head: the default, strong baseline classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from medfusion.heads.base import HEADS, Head

Activation = Literal["gelu", "relu", "silu"]
Norm = Literal["none", "batch", "layer"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (``gelu`` | ``relu`` | ``silu``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}; choose one of: {', '.join(_ACTIVATIONS)}") from None


def _make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"Unknown norm {kind!r}; choose one of: none, batch, layer")


@HEADS.register("mlp")
class MLPHead(Head):
    """Stack of ``Linear -> norm -> activation -> dropout`` blocks, then a ``Linear`` classifier.

    ``hidden_dims=()`` gives a plain linear classifier (a linear probe).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (256,),
        activation: Activation = "gelu",
        norm: Norm = "layer",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, num_classes)
        layers: list[nn.Module] = []
        dim = in_dim
        for hidden in hidden_dims:
            layers += [
                nn.Linear(dim, hidden),
                _make_norm(norm, hidden),
                make_activation(activation),
                nn.Dropout(dropout),
            ]
            dim = hidden
        layers.append(nn.Linear(dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
