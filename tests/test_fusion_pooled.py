"""Tests of the pooled fusions over N named inputs: the contract, absent inputs, the two-input shorthand, errors,
the maths of gated / tensor / low-rank fusion, and learning a task that needs all three inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from medfusion.fusion.base import Fusion, build_fusion
from medfusion.fusion.bilinear import BilinearFusion, TensorFusion
from medfusion.fusion.concat import ConcatFusion
from medfusion.fusion.elementwise import AddFusion, MulFusion
from medfusion.fusion.gated import GatedFusion, GatedUnit
from medfusion.fusion.low_rank import LowRankTensorFusion

POOLED = {
    "concat": ConcatFusion,
    "add": AddFusion,
    "mul": MulFusion,
    "gated": GatedFusion,
    "bilinear": BilinearFusion,
    "tensor": TensorFusion,
    "lmf": LowRankTensorFusion,
}
NAMES = list(POOLED)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "fusion"
DIMS = {"image": 12, "text": 10, "tabular": 6}
B, OUT = 6, 8
# text absent for samples 1 and 4, tabular for sample 4: sample 4 has the image only.
MASKS = {
    "text": torch.tensor([True, False, True, True, False, True]),
    "tabular": torch.tensor([True, True, True, True, False, True]),
}
SMALL = {"bilinear": {"rank": 16}, "tensor": {"proj_dim": 4}}  # keep the low-rank and tensor sizes test-sized


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, seed: int = 0, dims: dict[str, int] | None = None, **hparams: Any) -> Fusion:
    torch.manual_seed(seed)
    fusion = build_fusion(
        name, dims=dict(DIMS if dims is None else dims), out_dim=OUT, **{**SMALL.get(name, {}), **hparams}
    )
    assert type(fusion) is POOLED[name]
    return fusion


def make_inputs(seed: int = 1, n: int = B, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, dim, generator=g).requires_grad_(requires_grad) for name, dim in DIMS.items()}


# --- the contract --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name: str) -> None:
    fusion = make(name)
    assert fusion.names == list(DIMS) and fusion.out_dim == OUT and fusion.input_kind == "pooled"
    for masks in (None, MASKS):
        out = fusion(make_inputs(), masks=masks)
        assert out.shape == (B, OUT) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_input_and_parameter(name: str) -> None:
    fusion = make(name)
    inputs = make_inputs(requires_grad=True)
    out = fusion(inputs)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    for input_name, x in inputs.items():
        assert x.grad is not None and (x.grad.abs().sum(dim=1) > 0).all(), f"{input_name} got no gradient"
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_registered_in_init(name: str) -> None:
    fusion = make(name)
    before = {pname: id(p) for pname, p in fusion.named_parameters()}
    assert before and set(before) <= set(fusion.state_dict())
    for module in fusion.modules():
        for attr, value in vars(module).items():
            if isinstance(value, (list, tuple, dict, set)) and not attr.startswith("_"):
                items = value.values() if isinstance(value, dict) else value
                assert not any(isinstance(v, (nn.Module, torch.Tensor)) for v in items), f"{attr} hides tensors"
    fusion(make_inputs(), masks=MASKS)
    assert {pname: id(p) for pname, p in fusion.named_parameters()} == before  # nothing created in forward


@pytest.mark.parametrize("name", NAMES)
def test_batch_permutation_equivariance(name: str) -> None:
    fusion = make(name).eval()
    inputs = make_inputs()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = fusion({k: x[perm] for k, x in inputs.items()}, masks={k: m[perm] for k, m in MASKS.items()})
    torch.testing.assert_close(permuted, fusion(inputs, masks=MASKS)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_absent_input_has_no_influence(name: str) -> None:
    """Changing an absent input's values (even to NaN) leaves the output as is; each sample is fused on its own;
    absent rows get no gradient and the parameters' gradients stay finite."""
    fusion = make(name).eval()
    inputs = make_inputs()
    reference = fusion(inputs, masks=MASKS)
    for fill in (lambda x: 100 * torch.randn_like(x), lambda x: torch.full_like(x, float("nan"))):
        changed = {k: torch.where(MASKS[k][:, None], x, fill(x)) if k in MASKS else x for k, x in inputs.items()}
        assert not torch.equal(changed["text"], inputs["text"])
        torch.testing.assert_close(fusion(changed, masks=MASKS), reference, rtol=0, atol=0)
    for i in range(B):
        alone = fusion({k: x[i : i + 1] for k, x in inputs.items()}, masks={k: m[i : i + 1] for k, m in MASKS.items()})
        torch.testing.assert_close(alone, reference[i : i + 1], rtol=1e-5, atol=1e-6)
    fusion.train()
    nan_inputs = make_inputs(requires_grad=True)
    with torch.no_grad():
        nan_inputs["text"][~MASKS["text"]] = float("nan")
    fusion(nan_inputs, masks=MASKS).square().sum().backward()
    assert (nan_inputs["text"].grad[~MASKS["text"]] == 0).all() and (nan_inputs["text"].grad[MASKS["text"]] != 0).any()
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_two_input_shorthand_equals_dict_form(name: str) -> None:
    shorthand = build_fusion(name, image_dim=12, text_dim=10, out_dim=OUT, **SMALL.get(name, {})).eval()
    named = make(name, seed=5, dims={"image": 12, "text": 10}).eval()
    named.load_state_dict(shorthand.state_dict())
    inputs = make_inputs()
    image, text = inputs["image"], inputs["text"]
    mask = MASKS["text"]
    torch.testing.assert_close(shorthand(image, text), named({"image": image, "text": text}), rtol=0, atol=0)
    torch.testing.assert_close(
        shorthand(image, text, text_mask=mask),
        named({"image": image, "text": text}, masks={"text": mask}),
        rtol=0,
        atol=0,
    )
    assert not torch.allclose(shorthand(image, text, text_mask=mask), shorthand(image, text))


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_value_errors_naming_the_input(name: str) -> None:
    fusion = make(name)
    inputs = make_inputs()
    with pytest.raises(ValueError, match="tabular"):
        fusion({**inputs, "tabular": inputs["tabular"][:, :-1]})
    with pytest.raises(ValueError, match="tabular"):
        fusion({**inputs, "tabular": inputs["tabular"][:, None]})
    with pytest.raises(ValueError, match=r"batch.*tabular"):
        fusion({**inputs, "tabular": inputs["tabular"][:-1]})
    with pytest.raises(ValueError, match="genomics"):
        fusion({**inputs, "genomics": inputs["tabular"]})
    with pytest.raises(ValueError, match="tabular"):
        fusion({"image": inputs["image"], "text": inputs["text"]})
    with pytest.raises(ValueError, match="tabular mask"):
        fusion(inputs, masks={"tabular": MASKS["tabular"].long()})
    with pytest.raises(ValueError, match="tabular mask"):
        fusion(inputs, masks={"tabular": MASKS["tabular"][:-1]})


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_float64_and_under_bfloat16_autocast(name: str) -> None:
    fusion = make(name)
    inputs = make_inputs()
    assert fusion.double()({k: x.double() for k, x in inputs.items()}, masks=MASKS).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion.float()(inputs, masks=MASKS)
    assert out.shape == (B, OUT) and torch.isfinite(out).all()


# --- fusion-specific maths ------------------------------------------------------------------------------------------


def test_gated_modality_weights() -> None:
    fusion = make("gated")
    assert fusion.modality_weights() is None
    inputs = make_inputs(requires_grad=True)
    fusion(inputs, masks=MASKS)
    weights = fusion.modality_weights()
    assert weights is not None and weights.shape == (B, len(DIMS)) and not weights.requires_grad
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B))
    assert (weights[:, 1][~MASKS["text"]] == 0).all() and (weights[:, 2][~MASKS["tabular"]] == 0).all()
    torch.testing.assert_close(weights[4], torch.tensor([1.0, 0.0, 0.0]))  # the image alone
    assert (weights[MASKS["text"] & MASKS["tabular"]] > 0).all()


def test_gated_unit_is_the_sigmoid_gmu_for_two_inputs() -> None:
    """For N = 2 the softmax gate is ``σ(W_z,1 − W_z,2)``: ``h = z⊙tanh(W_1 a) + (1−z)⊙tanh(W_2 b)``."""
    torch.manual_seed(0)
    unit = GatedUnit([5, 3], 4)
    a, b = torch.randn(7, 5), torch.randn(7, 3)
    h, z = unit([a, b])
    logits = unit.gate(torch.cat([a, b], dim=-1)).unflatten(-1, (2, 4))
    gate = torch.sigmoid(logits[:, 0] - logits[:, 1])
    expected = gate * torch.tanh(unit.proj[0](a)) + (1 - gate) * torch.tanh(unit.proj[1](b))
    torch.testing.assert_close(h, expected)
    torch.testing.assert_close(z[:, 0], gate)
    assert z.shape == (7, 2, 4)
    h, z = unit([a, b], [torch.ones(7, dtype=torch.bool), torch.zeros(7, dtype=torch.bool)])
    torch.testing.assert_close(h, torch.tanh(unit.proj[0](a)))
    nobody = torch.zeros(7, dtype=torch.bool)
    h, z = unit([a, b], [nobody, nobody])
    assert (h == 0).all() and (z == 0).all()
    with pytest.raises(ValueError, match="2 inputs"):
        unit([a])
    with pytest.raises(ValueError, match="two or more"):
        GatedUnit([5], 4)


def test_tensor_fusion_is_the_n_way_outer_product() -> None:
    fusion = make("tensor", dropout=0.0)
    assert isinstance(fusion, TensorFusion) and fusion.out.in_features == 5**3
    inputs = make_inputs()
    projected = {k: torch.cat([fusion.proj[k](x), torch.ones(B, 1)], dim=-1) for k, x in inputs.items()}
    outer = torch.einsum("bi,bj,bk->bijk", projected["image"], projected["text"], projected["tabular"]).flatten(1)
    torch.testing.assert_close(fusion(inputs), fusion.out(outer))
    with pytest.raises(ValueError, match=r"proj_dim.*\['image', 'text', 'tabular'\].*proj_dim <= 39.*'lmf'"):
        make("tensor", proj_dim=40)
    with pytest.raises(ValueError, match="proj_dim"):
        make("tensor", proj_dim=0)


def test_low_rank_fusion_is_a_rank_r_tensor_fusion() -> None:
    """LMF equals ``W · vec(⊗_i [LN(x_i); 1]) + b`` with ``W = Σ_k ⊗_i W_i^(k)`` (Liu et al., 2018, eq. 6)."""
    fusion = make("lmf", rank=3, dropout=0.0).double()
    inputs = {k: x.double() for k, x in make_inputs().items()}
    extended = [torch.cat([fusion.norms[k](x), torch.ones(B, 1, dtype=x.dtype)], dim=-1) for k, x in inputs.items()]
    factors = [
        torch.cat([fusion.factors[k].weight, fusion.factors[k].bias[:, None]], dim=1).unflatten(0, (3, OUT))
        for k in DIMS
    ]  # [rank, out, D_i + 1]
    weight = torch.einsum("roi,roj,rok->oijk", *factors)
    expected = torch.einsum("oijk,bi,bj,bk->bo", weight, *extended) + fusion.bias
    torch.testing.assert_close(fusion(inputs), expected)
    with pytest.raises(ValueError, match="rank"):
        make("lmf", rank=0)


def test_bilinear_absent_factor_is_one_and_mfb_pools() -> None:
    fusion = make("bilinear", rank=6, pool_factor=3, dropout=0.0)
    assert isinstance(fusion, BilinearFusion) and fusion.factors["tabular"].out_features == 18
    inputs = make_inputs()
    absent = {"tabular": torch.zeros(B, dtype=torch.bool)}
    two = make("bilinear", dims={"image": 12, "text": 10}, rank=6, pool_factor=3, dropout=0.0)
    two.load_state_dict(fusion.state_dict(), strict=False)
    torch.testing.assert_close(fusion(inputs, masks=absent), two({"image": inputs["image"], "text": inputs["text"]}))
    with pytest.raises(ValueError, match="pool_factor"):
        make("bilinear", pool_factor=0)


# --- learning -------------------------------------------------------------------------------------------------------


def parity_task(n: int, seed: int, noise: float = 0.05) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One signed feature per input; the label is the parity (XOR) of the three signs, so any two inputs alone
    are at chance."""
    g = torch.Generator().manual_seed(seed)
    inputs = {name: noise * torch.randn(n, dim, generator=g) for name, dim in DIMS.items()}
    label = torch.zeros(n, dtype=torch.bool)
    for x in inputs.values():
        x[:, 0] = (torch.randint(0, 2, (n,), generator=g) * 2 - 1) * (0.5 + torch.rand(n, generator=g))
        label ^= x[:, 0] > 0
    return inputs, label.float()


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_task_that_needs_all_three_inputs(name: str) -> None:
    """Full-batch Adam fits the 3-way XOR; on fresh samples it beats clearly what it gets with one input zeroed
    or marked absent."""
    fusion = make(name, dropout=0.0)
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(OUT, 32), nn.GELU(), nn.Linear(32, 1))
    inputs, label = parity_task(256, seed=0)
    optimizer = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(300):
        loss = nn.functional.binary_cross_entropy_with_logits(head(fusion(inputs)).squeeze(-1), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fusion.eval()
    inputs, label = parity_task(512, seed=1)

    def accuracy(inputs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None) -> float:
        with torch.no_grad():
            return ((head(fusion(inputs, masks=masks)).squeeze(-1) > 0).float() == label).float().mean().item()

    full = accuracy(inputs)
    assert full > 0.9, f"{name}: held-out accuracy {full:.2f}"
    for dropped in DIMS:
        zeroed = accuracy({**inputs, dropped: torch.zeros_like(inputs[dropped])})
        absent = accuracy(inputs, masks={dropped: torch.zeros(len(label), dtype=torch.bool)})
        assert max(zeroed, absent) < full - 0.25, f"{name} without {dropped}: {zeroed:.2f} / {absent:.2f} vs {full:.2f}"


@pytest.mark.parametrize("name", NAMES)
def test_config_fragment_builds_an_n_input_fusion(name: str) -> None:
    """``configs/fusion/<name>.yaml`` parses as the model's fusion factory, which is then called with the sizes."""
    text = (CONFIG_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# ") and f"--config configs/fusion/{name}.yaml" in text.splitlines()[0]
    spec = yaml.safe_load(text)["model"]["init_args"]["fusion"]
    assert spec["class_path"] == f"medfusion.fusion.{POOLED[name].__name__}"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--fusion", type=Callable[[Mapping[str, int], int], Fusion])  # sizes left to the caller
    factory = parser.instantiate(parser.parse_object({"fusion": spec})).fusion
    fusion = factory(dims=DIMS, out_dim=OUT)
    assert type(fusion) is POOLED[name] and fusion(make_inputs(), masks=MASKS).shape == (B, OUT)
