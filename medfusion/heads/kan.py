"""Kolmogorov–Arnold heads: B-spline KAN (Liu et al. 2024) and group-rational KAN (KAT, Yang & Wang 2024).

* ``KANLinear`` / ``KANHead`` ("kan"): every edge ``i -> o`` carries its own learnable univariate function
  ``phi(x) = w_b * SiLU(x) + w_s * sum_j c_j B_j(x)`` with cubic B-spline bases on a uniform grid
  (efficient-KAN formulation: the spline part is one matmul over the flattened bases).
* ``GroupKANLinear`` / ``GroupKANHead`` ("group_kan"): the GR-KAN layer of the Kolmogorov–Arnold Transformer,
  a *grouped rational* activation (one learnable ``P(x)/Q(x)`` shared by each group of input features)
  followed by a dense ``Linear``. Far fewer parameters than a B-spline KAN of the same widths.

B-splines vanish outside ``grid_range``: an input there only sees the SiLU path. Both heads therefore put a
LayerNorm before every KAN layer; a LayerNorm output has unit variance, so with the default ``(-1, 1)`` grid
about a third of the inputs still fall outside it (the learnable LayerNorm gain can shrink them; or widen
``grid_range``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.heads.base import HEADS, Head


def uniform_bspline_bases(u: torch.Tensor, intervals: int, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``intervals - order`` B-spline bases of order ``order`` at ``u`` ``[..., 1]`` (positions in knot steps
    on a uniform grid of ``intervals + 1`` knots, the first at 0), by the Cox–de Boor recursion, and the bases of
    order ``order - 1`` (their derivative is the difference of neighbours: ``dB_j/du = B'_j - B'_(j+1)``)."""
    j = torch.arange(intervals, dtype=u.dtype, device=u.device)
    bases = ((u >= j) & (u < j + 1)).to(u.dtype)  # order 0: interval indicators
    lower = bases
    for k in range(1, order + 1):  # loops over the order only
        lower, j = bases, j[:-1]
        bases = ((u - j) * bases[..., :-1] + (j + k + 1 - u) * bases[..., 1:]) / k
    return bases, lower


class _UniformBSplines(torch.autograd.Function):
    """:func:`uniform_bspline_bases` with its analytic derivative: autograd through the recursion records ~20
    small ops per layer and step, most of a KAN head's training time on a CPU."""

    generate_vmap_rule = True  # its forward is plain tensor code (torch.func.vmap of stacked models)

    @staticmethod
    def forward(u: torch.Tensor, intervals: int, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        return uniform_bspline_bases(u, intervals, order)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (lower,) = ctx.saved_tensors
        return ((lower[..., :-1] - lower[..., 1:]) * grad).sum(-1, keepdim=True), None, None


class KANLinear(nn.Module):
    """KAN layer ``[..., in_features] -> [..., out_features]`` with B-spline edge functions (efficient-KAN style).

    ``y_o = sum_i w_b[o,i] SiLU(x_i) + w_s[o,i] sum_j c[o,i,j] B_j(x_i)``; the ``grid_size + spline_order``
    bases per input come from the Cox–de Boor recursion on a uniform grid extended by ``spline_order`` knots
    on both sides, so they form a partition of unity on ``grid_range``. Vectorised over features and outputs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        scale_noise: float = 0.1,
    ) -> None:
        super().__init__()
        low, high = grid_range
        if not high > low:
            raise ValueError(f"grid_range must be increasing, got {grid_range}")
        if grid_size < 1 or spline_order < 0:
            raise ValueError(f"need grid_size >= 1 and spline_order >= 0, got {grid_size}, {spline_order}")
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        step = (high - low) / grid_size
        self.first_knot, self.knot_step = low - spline_order * step, step
        knots = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) * step + low
        self.register_buffer("grid", knots)  # [grid_size + 2 * spline_order + 1], shared by all features
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        nn.init.kaiming_uniform_(self.base_weight, a=5**0.5)
        nn.init.kaiming_uniform_(self.spline_scaler, a=5**0.5)
        # Small random spline coefficients: each edge starts close to its SiLU path (efficient-KAN's noise init).
        nn.init.uniform_(self.spline_weight, -scale_noise / (2 * grid_size), scale_noise / (2 * grid_size))

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases ``[N, in_features, grid_size + spline_order]`` of ``x`` ``[N, in_features]``."""
        u = (x.unsqueeze(-1) - self.first_knot) / self.knot_step  # position in knot steps from the first knot
        intervals = self.grid_size + 2 * self.spline_order
        if self.spline_order > 0 and torch.is_grad_enabled() and x.requires_grad:
            return _UniformBSplines.apply(u, intervals, self.spline_order)[0]
        return uniform_bspline_bases(u, intervals, self.spline_order)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(x), self.base_weight)
        coeff = (self.spline_weight * self.spline_scaler.unsqueeze(-1)).flatten(1)  # [out, in * n_bases]
        spline = F.linear(self.b_splines(x).flatten(1), coeff)
        return (base + spline).reshape(*shape, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}"
        )


class GroupRational(nn.Module):
    """Grouped safe rational activation of KAT: ``phi_g(x) = P_g(x) / (1 + sum_i |b_{g,i}| |x|^i)``.

    Features are split into ``num_groups`` contiguous groups; each group has its own numerator (degree 5)
    and denominator (degree 4) coefficients. Taking ``|b_i| |x|^i`` keeps the denominator ``>= 1``, so there
    are no poles (the "safe" Padé activation unit of Molina et al. 2020, as used by KAT). Coefficients start
    at a least-squares fit of GELU on [-3, 3] (max error 0.012), as KAT initialises its second layer.
    """

    numerator_degree = 5
    denominator_degree = 4
    _GELU_NUMERATOR = (-0.002884, 0.548354, 0.473541, 0.57956, 0.342699, 0.062014)
    _GELU_DENOMINATOR = (0.444589, 0.557435, 0.304496, 0.073137)

    def __init__(self, num_features: int, num_groups: int = 8) -> None:
        super().__init__()
        if not 1 <= num_groups <= num_features:
            raise ValueError(f"num_groups must be in [1, {num_features}] (the number of features), got {num_groups}")
        self.num_groups = num_groups
        self.register_buffer("group_index", torch.arange(num_features) * num_groups // num_features)
        self.numerator = nn.Parameter(torch.tensor(self._GELU_NUMERATOR).repeat(num_groups, 1))
        self.denominator_coeff = nn.Parameter(torch.tensor(self._GELU_DENOMINATOR).repeat(num_groups, 1))

    def denominator(self, x: torch.Tensor) -> torch.Tensor:
        """``Q(x) = 1 + sum_i |b_i| |x|^i`` per feature of ``x`` ``[..., num_features]``; always ``>= 1``."""
        b = self.denominator_coeff.abs()[self.group_index]  # [F, 4]
        ax = x.abs()
        q = b[:, -1]
        for i in range(self.denominator_degree - 2, -1, -1):  # Horner on |x|
            q = q * ax + b[:, i]
        return 1 + q * ax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.numerator[self.group_index]  # [F, 6]
        p = a[:, -1]
        for i in range(self.numerator_degree - 1, -1, -1):  # Horner on x
            p = p * x + a[:, i]
        return p / self.denominator(x)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, order=({self.numerator_degree}, {self.denominator_degree})"


class GroupKANLinear(nn.Module):
    """GR-KAN layer (KAT, Yang & Wang 2024): ``Linear(GroupRational(x))``.

    Edge functions ``w_oi * phi_g(i)(x_i)`` share ``phi`` within a group of inputs, so the layer costs a
    ``Linear`` plus ``10 * num_groups`` coefficients instead of ``(grid_size + spline_order + 2)`` per edge.
    """

    def __init__(self, in_features: int, out_features: int, num_groups: int = 8) -> None:
        super().__init__()
        self.rational = GroupRational(in_features, num_groups)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rational(x))


def _widths(in_dim: int, hidden_dims: Sequence[int], num_classes: int) -> list[tuple[int, int]]:
    dims = [in_dim, *hidden_dims, num_classes]
    return list(pairwise(dims))


@HEADS.register("kan")
class KANHead(Head):
    """B-spline KAN classifier: ``[LayerNorm -> KANLinear]`` for each width in ``in_dim, *hidden_dims, num_classes``."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (64,),
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__(in_dim, num_classes)
        layers: list[nn.Module] = []
        for d_in, d_out in _widths(in_dim, hidden_dims, num_classes):
            layers += [nn.LayerNorm(d_in), KANLinear(d_in, d_out, grid_size, spline_order, grid_range)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@HEADS.register("group_kan")
class GroupKANHead(Head):
    """Group-rational KAN classifier: ``[LayerNorm -> GroupKANLinear]`` per width.

    Each layer has ``num_groups`` rational functions (capped at its input width).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (64,),
        num_groups: int = 8,
    ) -> None:
        super().__init__(in_dim, num_classes)
        layers: list[nn.Module] = []
        for d_in, d_out in _widths(in_dim, hidden_dims, num_classes):
            layers += [nn.LayerNorm(d_in), GroupKANLinear(d_in, d_out, min(num_groups, d_in))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
