"""Behaviour of the classification heads: shapes, learning, gradients, MoE routing, KAN bases."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from medfusion.heads import (
    HEADS,
    GroupKANHead,
    GroupKANLinear,
    GroupRational,
    Head,
    KANHead,
    KANLinear,
    MLPHead,
    MoEHead,
    build_head,
    moe_balance_loss,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "head"
ALL_HEADS = ["coral", "corn", "group_kan", "kan", "mlp", "moe", "residual_mlp"]
NOMINAL_HEADS = [name for name in ALL_HEADS if name not in ("coral", "corn")]  # ordinal ones: test_ordinal.py


def blobs(n_per_class: int = 50, dim: int = 16, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable toy data: one unit-variance gaussian blob per class around a random centre."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def test_registry_lists_every_head() -> None:
    assert HEADS.names() == ALL_HEADS
    for name in ALL_HEADS:
        assert HEADS.get(name).registry_name == name


@pytest.mark.parametrize("name", ALL_HEADS)
def test_head_shapes_and_contract(name: str) -> None:
    head = build_head(name, in_dim=16, num_classes=5)
    assert isinstance(head, Head) and head.in_dim == 16 and head.num_classes == 5
    assert head(torch.randn(7, 16)).shape == (7, 5)


@pytest.mark.parametrize("name", NOMINAL_HEADS)
def test_head_learns_separable_blobs(name: str) -> None:
    torch.manual_seed(0)
    x, y = blobs()
    head = build_head(name, in_dim=16, num_classes=3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + sum(head.extra_losses().values())
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        accuracy = (head(x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.95


@pytest.mark.parametrize("name", ALL_HEADS)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    # A large batch so that noisy top-2 routing selects every expert at least once.
    x, y = blobs(n_per_class=100)
    head = build_head(name, in_dim=16, num_classes=3)
    head.train()
    loss = F.cross_entropy(head(x), y) + sum(head.extra_losses().values())
    loss.backward()
    for pname, param in head.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ALL_HEADS)
def test_extra_losses_empty_in_eval(name: str) -> None:
    head = build_head(name, in_dim=16, num_classes=3)
    x = torch.randn(32, 16)
    head.train()
    head(x)
    head.eval()
    assert head.extra_losses() == {}
    with torch.no_grad():
        head(x)
    assert head.extra_losses() == {}


@pytest.mark.parametrize(
    ("kwargs", "n_linear"),
    [
        ({"hidden_dims": ()}, 1),
        ({"hidden_dims": (32, 16), "norm": "batch", "activation": "relu"}, 3),
        ({"hidden_dims": (8,), "norm": "none", "activation": "silu", "dropout": 0.0}, 2),
    ],
)
def test_mlp_options(kwargs: dict, n_linear: int) -> None:
    head = MLPHead(16, 3, **kwargs)
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == n_linear
    assert head(torch.randn(4, 16)).shape == (4, 3)


def test_mlp_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLPHead(16, 3, activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm"):
        MLPHead(16, 3, norm="group")  # type: ignore[arg-type]


# --- MoE ---------------------------------------------------------------------------------------


def _balanced_and_collapsed_probs(batch: int = 40, experts: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    balanced = torch.full((batch, experts), 0.1)
    balanced[torch.arange(batch), torch.arange(batch) % experts] = 0.7
    collapsed = torch.full((batch, experts), 0.1)
    collapsed[:, 0] = 0.7
    return balanced, collapsed


def test_balance_loss_minimal_for_uniform_routing() -> None:
    balanced, collapsed = _balanced_and_collapsed_probs()
    assert moe_balance_loss(balanced, "cv").item() == pytest.approx(0.0, abs=1e-7)
    assert moe_balance_loss(collapsed, "cv").item() == pytest.approx(0.45**2 + 3 * 0.15**2)
    assert moe_balance_loss(balanced, "switch").item() == pytest.approx(1.0)
    assert moe_balance_loss(collapsed, "switch").item() == pytest.approx(4 * 0.7)
    with pytest.raises(ValueError, match="balance"):
        moe_balance_loss(balanced, "entropy")  # type: ignore[arg-type]


@pytest.mark.parametrize("balance", ["cv", "switch"])
def test_moe_head_balance_loss_grows_when_routing_collapses(balance: str) -> None:
    x = torch.randn(64, 16)
    head = MoEHead(16, 3, noisy_gating=False, balance=balance, balance_weight=1.0)  # type: ignore[arg-type]
    nn.init.zeros_(head.router.weight)
    nn.init.zeros_(head.router.bias)  # every sample: uniform probabilities
    head(x)
    uniform = head.extra_losses()["moe_balance"].item()
    with torch.no_grad():
        head.router.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))  # everything to expert 0
    head(x)
    collapsed = head.extra_losses()["moe_balance"].item()
    assert collapsed > uniform
    if balance == "cv":
        assert uniform == pytest.approx(0.0, abs=1e-9)


def test_moe_balance_and_z_loss_scaled_by_weights() -> None:
    x = torch.randn(32, 16)
    head = MoEHead(16, 3, noisy_gating=False, balance_weight=0.5, z_loss_weight=0.1)
    head(x)
    losses = head.extra_losses()
    logits = head.router(x)
    probs = logits.softmax(-1)
    assert torch.allclose(losses["moe_balance"], 0.5 * moe_balance_loss(probs, "cv"))
    assert torch.allclose(losses["moe_z"], 0.1 * (torch.logsumexp(logits, -1) ** 2).mean())
    default = MoEHead(16, 3)
    default(x)
    assert set(default.extra_losses()) == {"moe_balance"}


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_topk_mixes_exactly_k_experts(top_k: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 16)
    head = MoEHead(16, 3, num_experts=4, top_k=top_k, noisy_gating=False).eval()
    with torch.no_grad():
        out = head(x)
        combine = head.routing()["combine"]
        probs = head.router(x).softmax(-1)
        expert_logits = torch.stack([expert(x) for expert in head.experts], 1)
    assert ((combine > 0).sum(-1) == top_k).all()
    chosen = probs.topk(top_k, -1).indices
    assert (combine.gather(-1, chosen) > 0).all()  # the non-zero weights sit on the top-k experts
    if top_k == 1:  # raw probability, not renormalised to 1
        assert torch.allclose(combine.sum(-1), probs.max(-1).values)
    else:
        assert torch.allclose(combine.sum(-1), torch.ones(50))
    assert torch.allclose(out, torch.einsum("bk,bkc->bc", combine, expert_logits), atol=1e-6)
    assert torch.allclose(head.routing()["load"].sum(), torch.tensor(float(top_k)))
    assert torch.allclose(head.routing()["importance"], probs.mean(0))
    assert not head.routing()["importance"].requires_grad


def test_top1_router_gets_task_gradient() -> None:
    torch.manual_seed(0)
    x, y = blobs()
    head = MoEHead(16, 3, top_k=1, noisy_gating=False, balance_weight=0.0)
    F.cross_entropy(head(x), y).backward()
    assert head.router.weight.grad is not None
    assert head.router.weight.grad.abs().sum() > 0


def test_noise_only_in_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    head = MoEHead(16, 3, noisy_gating=True)
    head.eval()
    with torch.no_grad():
        first, second = head(x), head(x)
    assert torch.equal(first, second)
    head.train()
    with torch.no_grad():
        head(x)
        importance_a = head.routing()["importance"]
        head(x)
        importance_b = head.routing()["importance"]
    assert not torch.allclose(importance_a, importance_b)
    quiet = MoEHead(16, 3, noisy_gating=False).train()
    assert quiet.noise is None
    with torch.no_grad():
        assert torch.equal(quiet(x), quiet(x))


def test_moe_rejects_bad_top_k() -> None:
    with pytest.raises(ValueError, match="top_k"):
        MoEHead(16, 3, num_experts=4, top_k=5)


# --- KAN ---------------------------------------------------------------------------------------


def test_bspline_bases_are_a_partition_of_unity() -> None:
    layer = KANLinear(3, 2, grid_size=5, spline_order=3, grid_range=(-1.0, 1.0))
    x = torch.linspace(-1.0, 0.9999, 401).unsqueeze(1).expand(-1, 3)
    bases = layer.b_splines(x)
    assert bases.shape == (401, 3, 5 + 3)
    assert (bases >= 0).all()
    assert torch.allclose(bases.sum(-1), torch.ones(401, 3), atol=1e-5)
    # Far outside the (extended) grid no basis is active: only the SiLU path remains.
    assert layer.b_splines(torch.full((2, 3), 5.0)).abs().sum() == 0


def test_kan_layer_fits_smooth_function_better_than_linear() -> None:
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 256).unsqueeze(1)
    y = torch.sin(3 * x)

    def fit(model: nn.Module) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(300):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        return F.mse_loss(model(x), y).item()

    kan_mse = fit(KANLinear(1, 1))
    linear_mse = fit(nn.Linear(1, 1))
    assert kan_mse / linear_mse < 0.1


def test_kan_layer_accepts_extra_leading_dims() -> None:
    layer = KANLinear(4, 3)
    assert layer(torch.randn(2, 5, 4)).shape == (2, 5, 3)


def test_group_kan_is_smaller_than_kan() -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(GroupKANHead(64, 5, hidden_dims=(64,))) < count(KANHead(64, 5, hidden_dims=(64,))) / 5
    assert count(GroupKANLinear(64, 32, num_groups=8)) == 64 * 32 + 32 + 8 * (6 + 4)


def test_group_rational_denominator_at_least_one() -> None:
    torch.manual_seed(0)
    rational = GroupRational(16, num_groups=4)
    with torch.no_grad():
        rational.denominator_coeff.normal_(0.0, 2.0)  # negative coefficients too
    x = 10 * torch.randn(256, 16)
    assert (rational.denominator(x) >= 1).all()
    assert torch.isfinite(rational(x)).all()


def test_group_rational_shares_functions_within_groups_and_starts_near_gelu() -> None:
    rational = GroupRational(8, num_groups=2)
    x = torch.linspace(-3, 3, 61).unsqueeze(1).expand(-1, 8)
    assert (rational(x) - F.gelu(x)).abs().max() < 0.02
    with torch.no_grad():
        rational.numerator[1].mul_(2.0)  # change only the second group's function
    out = rational(x)
    assert torch.allclose(out[:, 0], out[:, 3]) and torch.allclose(out[:, 4], out[:, 7])
    assert not torch.allclose(out[:, 0], out[:, 4])
    with pytest.raises(ValueError, match="num_groups"):
        GroupRational(4, num_groups=8)


# --- config fragments ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_head_config_fragment_builds(path: Path) -> None:
    from jsonargparse import ArgumentParser

    def model(head: Callable[[int, int], Head], loss: Callable[..., nn.Module] | None = None) -> None:
        """Stand-in for the medfusion models, which call ``head(in_dim, num_classes)`` (an ordinal head's fragment
        sets its loss too)."""

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(model, "model")
    cfg = parser.parse_object({"model": yaml.safe_load(path.read_text())["model"]["init_args"]})
    head = parser.instantiate(cfg).model.head(16, 3)
    assert isinstance(head, Head) and head.registry_name in ALL_HEADS
    assert head(torch.randn(4, 16)).shape == (4, 3)
    assert math.isfinite(head(torch.randn(4, 16)).sum().item())


def reference_bases(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor on the knots themselves, differentiated by autograd: what KANLinear.b_splines must equal."""
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:-1]) & (x < grid[1:])).to(x.dtype)
    for k in range(1, order + 1):
        left = (x - grid[: -(k + 1)]) / (grid[k:-1] - grid[: -(k + 1)]) * bases[..., :-1]
        right = (grid[k + 1 :] - x) / (grid[k + 1 :] - grid[1:-k]) * bases[..., 1:]
        bases = left + right
    return bases


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bspline_bases_and_their_analytic_gradient_equal_autograd_through_the_recursion(order: int) -> None:
    layer = KANLinear(6, 2, grid_size=4, spline_order=order, grid_range=(-1.5, 0.5)).double()
    x = (torch.rand(40, 6, dtype=torch.float64) * 4 - 2.5).requires_grad_()  # inside and outside the grid
    weights = torch.randn(40, 6, 4 + order, dtype=torch.float64)
    bases = layer.b_splines(x)
    expected = reference_bases(x, layer.grid, order)
    torch.testing.assert_close(bases, expected)
    (grad,) = torch.autograd.grad((bases * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    torch.testing.assert_close(grad, expected_grad)
    assert grad.abs().sum() > 0
    with torch.no_grad():  # evaluation takes the plain path: the same values
        torch.testing.assert_close(layer.b_splines(x), expected.detach())
