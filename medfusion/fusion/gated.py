"""Gated multimodal unit (GMU; Arevalo et al., ICLR workshop 2017) over N inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medfusion.fusion.base import FUSIONS, Fusion, fill_absent
from medfusion.fusion.checks import Inputs, Masks


class GatedUnit(nn.Module):
    """GMU core over N ≥ 2 vectors, reusable on its own (Arevalo et al., 2017).

    ``h_i = tanh(W_i x_i)``, ``z = softmax_i(W_z,i [x_1; …; x_N])`` per output dimension over the inputs,
    ``h = Σ_i z_i ⊙ h_i``. For N = 2 this is the paper's bimodal ``h = z⊙h_1 + (1−z)⊙h_2`` with
    ``z = σ((W_z,1 − W_z,2)[x_1; x_2])``, a reparametrisation of its sigmoid gate; the paper's N-input sketch uses
    independent sigmoids, the softmax keeps the weights of each dimension a convex combination. An absent input
    is zeroed before the gate (its values reach nothing) and its logit set to the dtype's minimum, so its
    weight is exactly 0; a sample with no input present gets ``z = 0`` and ``h = 0``.
    """

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2:
            raise ValueError(f"GatedUnit fuses two or more inputs, got dims={dims}")
        self.out_dim = out_dim
        self.proj = nn.ModuleList(nn.Linear(dim, out_dim) for dim in dims)
        self.gate = nn.Linear(sum(dims), len(dims) * out_dim)

    def forward(
        self, xs: Sequence[torch.Tensor], present: Sequence[torch.Tensor | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``xs`` (one ``[B, D_i]`` per input; ``present``: bool ``[B]`` per input, None = all present) into
        ``h`` ``[B, out_dim]``; also return the gates ``z`` ``[B, N, out_dim]`` (summing to 1 over N)."""
        if len(xs) != len(self.proj) or (present is not None and len(present) != len(xs)):
            raise ValueError(f"GatedUnit was built for {len(self.proj)} inputs, got {len(xs)} (and masks for them)")
        masks = list(present) if present is not None else [None] * len(xs)
        xs = [fill_absent(x, m) for x, m in zip(xs, masks, strict=True)]
        logits = self.gate(torch.cat(xs, dim=-1)).unflatten(-1, (len(xs), self.out_dim))  # [B, N, D]
        if any(m is not None for m in masks):
            alive = [
                x.new_ones(x.shape[0], dtype=torch.bool) if m is None else m for x, m in zip(xs, masks, strict=True)
            ]
            keep = torch.stack(alive, dim=1)[..., None]  # [B, N, 1]
            # dtype minimum, not -inf: a sample with no input present would get NaN from softmax(-inf, ..., -inf).
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
            z = torch.softmax(logits, dim=1).masked_fill(~keep, 0)
        else:
            z = torch.softmax(logits, dim=1)
        h = torch.stack([torch.tanh(proj(x)) for proj, x in zip(self.proj, xs, strict=True)], dim=1)
        return (z * h).sum(dim=1), z


@FUSIONS.register("gated")
class GatedFusion(Fusion):
    """Gated multimodal unit over pooled inputs (Arevalo et al., 2017), see :class:`GatedUnit`.

    ``h = Dropout(Σ_i z_i ⊙ tanh(W_i x_i))`` with ``z = softmax_i(W_z,i [x_1; …; x_N])``. :meth:`modality_weights`
    gives the last forward's ``z`` averaged over the feature dimensions, ``[B, N]``: the gate can saturate onto
    one input, so log its mean per class.
    """

    def __init__(
        self,
        dims: Mapping[str, int] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: int | None = None,
        text_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        self.unit = GatedUnit(list(self.dims.values()), self.out_dim)
        self.dropout = nn.Dropout(dropout)
        self._weights: torch.Tensor | None = None

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        fused, gate = self.unit([inputs[name] for name in self.names], [masks[name] for name in self.names])
        self._weights = gate.detach().mean(dim=-1)
        return self.dropout(fused)

    def modality_weights(self) -> torch.Tensor | None:
        """The last forward's gates averaged over the feature dimensions, ``[B, N]`` in ``names`` order: rows sum
        to 1 (0 for a sample with no input present), an absent input weighs 0; None before the first forward."""
        return self._weights
