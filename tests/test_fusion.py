"""Tests of the fusion library: the contract, gradients, masking, batch independence, errors and learning."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

import medfusion.fusion as fusion_pkg
from medfusion.fusion import (
    FUSIONS,
    BilinearFusion,
    CoAttentionFusion,
    CrossAttentionFusion,
    Fusion,
    GatedFusion,
    HierarchicalFusion,
    TensorFusion,
    build_fusion,
    masked_mean,
    signed_sqrt,
)

NAMES = FUSIONS.names()
TOKEN_NAMES = [n for n in NAMES if FUSIONS.get(n).input_kind == "tokens"]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "fusion"
B, OUT = 4, 16
DIMS: dict[str, tuple[Any, Any]] = {"pooled": (24, 20), "tokens": (24, 20), "levels": ([8, 16, 24], [20, 20, 20])}
NI, NT = 5, 7
TEXT_LENGTHS = [7, 3, 5, 1]  # real text tokens per sample
IMAGE_LENGTHS = [5, 5, 4, 5]  # one sample with a padded patch, to test image masks too
# Token fusions in several configurations: default, the other direction, deeper stacks.
TOKEN_CASES = [
    ("cross_attention", {}),
    ("cross_attention", {"queries": ["image"], "num_layers": 2}),
    ("co_attention", {}),
    ("co_attention", {"num_layers": 2}),
]


pytestmark = pytest.mark.usefixtures("one_thread")


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


def apply(fn: Any, args: tuple[Any, Any]) -> tuple[Any, Any]:
    """Apply ``fn`` to every tensor of ``(image, text)``, keeping lists as lists."""
    return tuple([fn(x) for x in a] if isinstance(a, list) else fn(a) for a in args)  # type: ignore[return-value]


def run(fusion: Fusion, args: tuple[Any, Any], kwargs: dict[str, Any]) -> torch.Tensor:
    return fusion(*args, **kwargs)


# --- registry -----------------------------------------------------------------------------------------------------


def test_registry_names() -> None:
    pooled = ["add", "bilinear", "concat", "gated", "lmf", "mul", "tensor"]
    assert sorted([*pooled, "co_attention", "cross_attention", "hierarchical"]) == NAMES
    for name in NAMES:
        cls = FUSIONS.get(name)
        assert issubclass(cls, Fusion) and cls.input_kind in {"pooled", "tokens", "levels"}
        assert getattr(fusion_pkg, cls.__name__) is cls


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(KeyError, match="Unknown fusion 'nope'") as info:
        build_fusion("nope", image_dim=4, text_dim=4, out_dim=4)
    for name in NAMES:
        assert name in str(info.value)


# --- the contract, for every fusion --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name: str) -> None:
    fusion = make(name)
    args, kwargs = make_inputs(fusion.input_kind)
    out = run(fusion, args, kwargs)
    assert out.shape == (B, OUT) and fusion.out_dim == OUT
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_inputs_and_every_parameter(name: str) -> None:
    fusion = make(name)
    args, kwargs = make_inputs(fusion.input_kind, requires_grad=True)
    out = run(fusion, args, kwargs)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    for x in leaves(args):
        assert x.grad is not None and x.grad.abs().sum() > 0
    state = fusion.state_dict()
    for pname, p in fusion.named_parameters():
        assert pname in state, pname
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


def _hidden_tensors(obj: Any) -> bool:
    if isinstance(obj, (nn.Module, nn.Parameter)):
        return True
    if isinstance(obj, (list, tuple, set)):
        return any(_hidden_tensors(o) for o in obj)
    if isinstance(obj, dict):
        return any(_hidden_tensors(o) for o in obj.values())
    return False


@pytest.mark.parametrize("name", NAMES)
def test_no_parameters_or_modules_in_plain_containers(name: str) -> None:
    for module in make(name).modules():
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue
            assert not (isinstance(value, (list, tuple, set, dict)) and _hidden_tensors(value)), (
                f"{type(module).__name__}.{attr} hides modules/parameters in a Python container"
            )


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    fusion = make(name, seed=0).eval()
    fresh = make(name, seed=123).eval()
    args, kwargs = make_inputs(fusion.input_kind)
    assert not torch.allclose(run(fusion, args, kwargs), run(fresh, args, kwargs))
    fresh.load_state_dict(fusion.state_dict())
    torch.testing.assert_close(run(fresh, args, kwargs), run(fusion, args, kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_samples_never_mix(name: str) -> None:
    fusion = make(name).eval()
    args, kwargs = make_inputs(fusion.input_kind)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = run(fusion, apply(lambda x: x[perm], args), {k: m[perm] for k, m in kwargs.items()})
    torch.testing.assert_close(permuted, run(fusion, args, kwargs)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_eval(name: str) -> None:
    fusion = make(name).eval()
    args, kwargs = make_inputs(fusion.input_kind)
    torch.testing.assert_close(run(fusion, args, kwargs), run(fusion, args, kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_no_hard_coded_device(name: str) -> None:
    fusion = make(name).to(torch.float64)
    args, kwargs = make_inputs(fusion.input_kind)
    assert run(fusion, apply(lambda x: x.double(), args), kwargs).dtype == torch.float64
    for cls in type(fusion).__mro__:
        if cls.__module__.startswith("medfusion.fusion"):
            assert "cuda" not in inspect.getsource(inspect.getmodule(cls)).lower(), f"{cls.__module__} names a device"


def test_no_module_of_the_package_names_a_device() -> None:
    for path in Path(fusion_pkg.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert "cuda" not in source.lower() and "torch.device(" not in source, f"{path.name} hard-codes a device"


@pytest.mark.parametrize("name", NAMES)
def test_runs_under_bfloat16_autocast(name: str) -> None:
    fusion = make(name)
    args, kwargs = make_inputs(fusion.input_kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(fusion, args, kwargs)
    assert out.shape == (B, OUT) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_clear_errors_on_bad_shapes(name: str) -> None:
    fusion = make(name)
    kind = fusion.input_kind
    args, kwargs = make_inputs(kind)
    image, text = args
    if kind == "levels":
        bad_dim = ([*image[:-1], torch.randn(B, 7)], text)
        bad_ndim = (image, [*text[:-1], torch.randn(B, 2, 20)])
        bad_batch = (image, [*text[:-1], torch.randn(B + 1, 20)])
        with pytest.raises(ValueError, match="levels"):
            fusion(image[:-1], text)
        with pytest.raises(ValueError, match="levels"):
            fusion(image, [*text, text[0]])
        with pytest.raises(ValueError, match="list"):
            fusion(image[0], text)
    else:
        bad_dim = (image[..., :-1], text)
        bad_ndim = (image, text[:, None] if kind == "pooled" else text[:, 0])
        bad_batch = (image, text[:-1])
    with pytest.raises(ValueError, match="image"):
        run(fusion, bad_dim, kwargs)
    with pytest.raises(ValueError, match="text"):
        run(fusion, bad_ndim, kwargs)
    with pytest.raises(ValueError, match="samples"):
        run(fusion, bad_batch, {})
    if kind != "levels":
        with pytest.raises(ValueError, match="text"):
            run(fusion, (image, text[..., :-1]), kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_config_fragment(name: str) -> None:
    """Each ``configs/fusion/<name>.yaml`` parses as the model's ``Callable[..., Fusion]`` and builds the fusion."""
    text = (CONFIG_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# ") and f"--config configs/fusion/{name}.yaml" in text.splitlines()[0]
    spec = yaml.safe_load(text)["model"]["init_args"]["fusion"]
    assert spec["class_path"] == f"medfusion.fusion.{FUSIONS.get(name).__name__}"
    assert not {"image_dim", "text_dim", "out_dim"} & set(spec["init_args"])
    parser = ArgumentParser(exit_on_error=False)
    # jsonargparse leaves the first N parameters to the caller for a Callable[[N args], ...] type; with
    # Callable[..., Fusion] it would require text_dim/out_dim in the config.
    parser.add_argument("--fusion", type=Callable[[Any, Any, int], Fusion])
    factory = parser.instantiate(parser.parse_object({"fusion": spec})).fusion
    image_dim, text_dim = DIMS[FUSIONS.get(name).input_kind]
    fusion = factory(image_dim=image_dim, text_dim=text_dim, out_dim=OUT)
    assert type(fusion) is FUSIONS.get(name)
    args, kwargs = make_inputs(fusion.input_kind)
    assert run(fusion, args, kwargs).shape == (B, OUT)


# --- token fusions: masks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hparams"), TOKEN_CASES)
def test_padded_features_are_ignored(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams).eval()
    (image, text), kwargs = make_inputs("tokens")
    reference = fusion(image, text, **kwargs)
    noise = torch.randn_like(image) * 100, torch.randn_like(text) * 100
    image2 = torch.where(kwargs["image_mask"][..., None], image, noise[0])
    text2 = torch.where(kwargs["text_mask"][..., None], text, noise[1])
    assert not torch.equal(image2, image) and not torch.equal(text2, text)
    torch.testing.assert_close(fusion(image2, text2, **kwargs), reference, rtol=1e-5, atol=1e-6)
    # NaN in padding must not leak either.
    text3 = text.masked_fill(~kwargs["text_mask"][..., None], float("nan"))
    torch.testing.assert_close(fusion(image, text3, **kwargs), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "hparams"), TOKEN_CASES)
def test_padding_equals_unpadded_sample(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams).eval()
    (image, text), kwargs = make_inputs("tokens")
    batched = fusion(image, text, **kwargs)
    for i, (n_img, n_txt) in enumerate(zip(IMAGE_LENGTHS, TEXT_LENGTHS, strict=True)):
        alone = fusion(image[i : i + 1, :n_img], text[i : i + 1, :n_txt])
        torch.testing.assert_close(alone, batched[i : i + 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fusion(image, text), fusion(image, text, image_mask=torch.ones(B, NI, dtype=torch.bool)))


@pytest.mark.parametrize("name", TOKEN_NAMES)
def test_token_mask_errors(name: str) -> None:
    fusion = make(name)
    (image, text), kwargs = make_inputs("tokens")
    with pytest.raises(ValueError, match="bool"):
        fusion(image, text, text_mask=kwargs["text_mask"].long())
    with pytest.raises(ValueError, match="text mask"):
        fusion(image, text, text_mask=kwargs["text_mask"][:, :-1])
    empty = kwargs["image_mask"].clone()
    empty[1] = False
    with pytest.raises(ValueError, match="at least one real token"):
        fusion(image, text, image_mask=empty)
    small = make(name, max_tokens=NI - 1)
    with pytest.raises(ValueError, match=f"image has {NI} tokens but max_tokens={NI - 1}; raise max_tokens"):
        small(image, text)
    with pytest.raises(ValueError, match="divisible"):
        make(name, num_heads=5)


def test_masked_mean() -> None:
    x = torch.arange(12.0).reshape(1, 4, 3).repeat(2, 1, 1)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    torch.testing.assert_close(masked_mean(x, mask), torch.stack([x[0, :2].mean(0), x[1].mean(0)]))
    torch.testing.assert_close(masked_mean(x, None), x.mean(1))


@pytest.mark.parametrize("query", ["text", "image"])
def test_cross_attention_maps(query: str) -> None:
    fusion = make("cross_attention", queries=[query], num_heads=4)
    (image, text), kwargs = make_inputs("tokens")
    fusion(image, text, **kwargs)
    assert fusion.attention_maps() == {}  # off by default
    fusion.store_attention = True
    fusion.eval()(image, text, **kwargs)
    key = "text->image" if query == "text" else "image->text"
    maps = fusion.attention_maps()[key]
    nq, nk, key_mask = (NT, NI, kwargs["image_mask"]) if query == "text" else (NI, NT, kwargs["text_mask"])
    assert maps.shape == (B, 4, nq, nk) and not maps.requires_grad
    torch.testing.assert_close(maps.sum(-1), torch.ones(B, 4, nq))
    assert (maps.masked_select(~key_mask[:, None, None, :]) == 0).all()
    assert (maps.masked_select(key_mask[:, None, None, :]) > 0).all()


def test_co_attention_maps() -> None:
    fusion = make("co_attention", store_attention=True).eval()
    (image, text), kwargs = make_inputs("tokens")
    fusion(image, text, **kwargs)
    maps = fusion.attention_maps()
    assert set(maps) == {"text->image", "image->text"} and maps["text->image"].shape == (B, 8, NT, NI)
    assert maps["image->text"].shape == (B, 8, NI, NT)
    assert (maps["image->text"].masked_select(~kwargs["text_mask"][:, None, None, :]) == 0).all()


# --- gates, level weights, bilinear --------------------------------------------------------------------------------


def test_gated_gate() -> None:
    fusion = make("gated")
    assert isinstance(fusion, GatedFusion)
    (image, text), _ = make_inputs("pooled")
    fusion(image, text)
    weights = fusion.modality_weights()
    assert weights is not None and weights.shape == (B, 2) and not weights.requires_grad
    assert ((weights > 0) & (weights < 1)).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(B))


def test_hierarchical_gates_and_level_weights() -> None:
    fusion = make("hierarchical")
    assert isinstance(fusion, HierarchicalFusion) and fusion.num_levels == 3
    args, _ = make_inputs("levels")
    out = fusion(*args)
    weights = fusion.modality_weights()
    assert weights is not None and weights.shape == (B, 2) and ((weights > 0) & (weights < 1)).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B))
    assert isinstance(fusion.level_logits, nn.Parameter)
    assert "level_logits" in dict(fusion.named_parameters())
    torch.testing.assert_close(fusion.level_weights(), torch.full((3,), 1 / 3))
    (out * torch.randn_like(out)).sum().backward()
    assert fusion.level_logits.grad is not None and fusion.level_logits.grad.abs().sum() > 0
    with torch.no_grad():
        fusion.level_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    torch.testing.assert_close(fusion.level_weights().sum(), torch.tensor(1.0))
    sigmoid = make("hierarchical", level_weighting="sigmoid")
    torch.testing.assert_close(sigmoid.level_weights(), torch.full((3,), 0.5))


def test_hierarchical_constructor_errors() -> None:
    with pytest.raises(ValueError, match="equal length"):
        HierarchicalFusion(image_dim=[8, 16], text_dim=[20, 20, 20], out_dim=OUT)
    with pytest.raises(ValueError, match="equal length"):
        HierarchicalFusion(image_dim=[], text_dim=[], out_dim=OUT)
    with pytest.raises(ValueError, match="level_weighting"):
        HierarchicalFusion(image_dim=[8], text_dim=[8], out_dim=OUT, level_weighting="max")  # type: ignore[arg-type]


def test_signed_sqrt_finite_gradient_at_zero() -> None:
    x = torch.tensor([-4.0, 0.0, 4.0], requires_grad=True)
    y = signed_sqrt(x)
    y.sum().backward()
    assert y[1] == 0 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(y[2], torch.tensor(2.0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_bilinear_all_zero_input_has_finite_gradients(bias: bool) -> None:
    fusion = make("bilinear", rank=8)
    assert isinstance(fusion, BilinearFusion)
    if not bias:  # exact zeros through the whole product: the signed sqrt sees 0
        with torch.no_grad():
            fusion.factors["image"].bias.zero_()
    image = torch.zeros(B, 24, requires_grad=True)
    text = torch.randn(B, 20, requires_grad=True)
    fusion(image, text).square().sum().backward()
    for p in [image, text, *fusion.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_bilinear_mfb_pooling() -> None:
    fusion = make("bilinear", rank=6, pool_factor=3, dropout=0.0)
    assert fusion.factors["image"].out_features == 18 and fusion.out.in_features == 6
    (image, text), _ = make_inputs("pooled")
    assert fusion(image, text).shape == (B, OUT)


def test_tensor_fusion_size_cap() -> None:
    fusion = make("tensor", proj_dim=4)
    assert isinstance(fusion, TensorFusion) and fusion.out.in_features == 25
    with pytest.raises(ValueError, match="proj_dim"):
        make("tensor", proj_dim=256)


def test_attention_constructor_errors() -> None:
    with pytest.raises(ValueError, match="queries names unknown inputs \\['both'\\]"):
        CrossAttentionFusion(image_dim=8, text_dim=8, out_dim=8, queries=["both"])
    with pytest.raises(ValueError, match="num_layers"):
        CoAttentionFusion(image_dim=8, text_dim=8, out_dim=8, num_layers=0)


# --- learning ------------------------------------------------------------------------------------------------------


def synthetic_task(
    kind: str, task: str, n: int = 256, seed: int = 0, noise: float = 0.03
) -> tuple[tuple[Any, Any], dict[str, Any], torch.Tensor]:
    """Inputs whose label needs both modalities: XOR of the signs of one image and one text feature, or (for
    additive fusions, which cannot represent XOR under a linear head) their OR (one modality alone: 75%)."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.randint(0, 2, (n,), generator=g) * 2 - 1) * (0.5 + torch.rand(n, generator=g))
    b = (torch.randint(0, 2, (n,), generator=g) * 2 - 1) * (0.5 + torch.rand(n, generator=g))
    label = ((a > 0) != (b > 0)) if task == "xor" else ((a > 0) | (b > 0))
    image_dim, text_dim = DIMS[kind]
    kwargs: dict[str, Any] = {}
    if kind == "pooled":
        image, text = noise * torch.randn(n, image_dim, generator=g), noise * torch.randn(n, text_dim, generator=g)
        image[:, 0], text[:, 0] = a, b
        args: tuple[Any, Any] = (image, text)
    elif kind == "tokens":  # the feature sits in one token of each modality; texts have random lengths
        image = noise * torch.randn(n, NI, image_dim, generator=g)
        text = noise * torch.randn(n, NT, text_dim, generator=g)
        image[:, 0, 0], text[:, 0, 0] = a, b
        lengths = torch.randint(1, NT + 1, (n,), generator=g)
        kwargs = {"text_mask": torch.arange(NT) < lengths[:, None]}
        args = (image, text)
    else:  # the feature sits in the middle level of both modalities
        image = [noise * torch.randn(n, d, generator=g) for d in image_dim]
        text = [noise * torch.randn(n, d, generator=g) for d in text_dim]
        image[1][:, 0], text[1][:, 0] = a, b
        args = (image, text)
    return args, kwargs, label.float()


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_task_that_needs_both_modalities(name: str) -> None:
    """Adam + a linear head fit the task and generalise to fresh samples (so the fit is not memorisation)."""
    fusion = make(name)
    torch.manual_seed(0)
    head = nn.Linear(OUT, 1)
    task = "or" if name == "add" else "xor"
    args, kwargs, label = synthetic_task(fusion.input_kind, task)
    optimizer = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(200):
        loss = nn.functional.binary_cross_entropy_with_logits(head(fusion(*args, **kwargs)).squeeze(-1), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fusion.eval()
    with torch.no_grad():
        train = ((head(fusion(*args, **kwargs)).squeeze(-1) > 0).float() == label).float().mean()
        args, kwargs, label = synthetic_task(fusion.input_kind, task, n=512, seed=1)
        held_out = ((head(fusion(*args, **kwargs)).squeeze(-1) > 0).float() == label).float().mean()
    assert train > 0.9, f"{name}: train accuracy {train:.2f}"
    assert held_out > 0.85, f"{name}: held-out accuracy {held_out:.2f}"


def test_every_registered_fusion_has_the_n_input_contract_tests() -> None:
    """tests/test_fusion_pooled.py and tests/test_fusion_tokens.py run the contract with three named inputs (shapes,
    gradients, registered parameters, permutation equivariance, masks, errors, a task needing all three) for
    their lists of fusions: together they must name every registered one."""
    from test_fusion_pooled import NAMES as POOLED
    from test_fusion_tokens import NAMES as TOKENS

    assert sorted([*POOLED, *TOKENS]) == NAMES
