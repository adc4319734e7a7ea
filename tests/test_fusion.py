"""Tests of the fusion library that hold for every registered fusion: the registry, the contract (shapes,
gradients, registered parameters, state dicts, batch independence, determinism, dtypes and devices, autocast, shape
errors, config fragments) and learning a task that needs both modalities. The specifics of single fusions (token
masks, attention maps, gates, level weights, bilinear, tensor) are in test_fusion_specifics.py."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fusion_helpers import DIMS, NAMES, NI, NT, OUT, B, leaves, make, make_inputs
from jsonargparse import ArgumentParser
from torch import nn

import medfusion.fusion as fusion_pkg
from medfusion.fusion import FUSIONS, Fusion, build_fusion

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "fusion"

pytestmark = pytest.mark.usefixtures("one_thread")


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
