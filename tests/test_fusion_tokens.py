"""The attention and hierarchical fusions over three named inputs: contract, masks, presence, maps and learning."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from medfusion.fusion import FUSIONS, CoAttentionFusion, CrossAttentionFusion, Fusion, HierarchicalFusion, build_fusion

B, OUT, HEADS = 4, 16, 2
DIMS = {"image": 12, "text": 10, "tabular": 6}
TOKENS = {"image": 5, "text": 7, "tabular": 4}
LEVEL_DIMS = {"image": [8, 12], "text": [10, 10], "tabular": [6, 4]}
LENGTHS = {"image": [5, 5, 4, 5], "text": [7, 3, 5, 1]}  # real tokens per sample; tabular has no padding
NAMES = ["cross_attention", "co_attention", "hierarchical"]
TOKEN_CASES = [
    ("cross_attention", {}),
    ("cross_attention", {"queries": ["text"], "num_layers": 2}),
    ("co_attention", {}),
    ("co_attention", {"num_layers": 2}),
]
CASES = [*TOKEN_CASES, ("hierarchical", {})]


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, seed: int = 0, **hparams: Any) -> Fusion:
    """A registered fusion over the three test inputs (two attention heads for the token fusions)."""
    torch.manual_seed(seed)
    if FUSIONS.get(name).input_kind == "levels":
        return build_fusion(name, dims=LEVEL_DIMS, out_dim=OUT, **hparams)
    return build_fusion(name, dims=DIMS, out_dim=OUT, **{"num_heads": HEADS, **hparams})


def lengths_mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n) < torch.tensor(lengths)[:, None]


def make_inputs(kind: str, seed: int = 1) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Random inputs ``{name: ...}`` of ``kind`` with batch ``B``, and the masks of the padded token inputs."""
    g = torch.Generator().manual_seed(seed)
    if kind == "levels":
        return {name: [torch.randn(B, d, generator=g) for d in dims] for name, dims in LEVEL_DIMS.items()}, {}
    inputs = {name: torch.randn(B, TOKENS[name], d, generator=g) for name, d in DIMS.items()}
    return inputs, {name: lengths_mask(lengths, TOKENS[name]) for name, lengths in LENGTHS.items()}


def leaves(inputs: dict[str, Any]) -> list[torch.Tensor]:
    return [x for value in inputs.values() for x in (value if isinstance(value, list) else [value])]


def mapped(inputs: dict[str, Any], fn: Any) -> dict[str, Any]:
    """``fn`` applied to every tensor of ``inputs``, lists kept as lists."""
    return {k: [fn(x) for x in v] if isinstance(v, list) else fn(v) for k, v in inputs.items()}


# --- the contract --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_output_shape(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams)
    inputs, masks = make_inputs(fusion.input_kind)
    out = fusion(inputs, masks=masks)
    assert out.shape == (B, OUT) and fusion.out_dim == OUT and torch.isfinite(out).all()
    assert fusion.names == list(DIMS)


@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_gradients_reach_every_input_and_parameter(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams)
    inputs, masks = make_inputs(fusion.input_kind)
    for x in leaves(inputs):
        x.requires_grad_(True)
    out = fusion(inputs, masks=masks)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    for name_, x in inputs.items():
        for level in x if isinstance(x, list) else [x]:
            assert level.grad is not None and level.grad.abs().sum() > 0, name_
    for pname, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        used = p.grad[:, : TOKENS[pname.split(".")[1]]] if pname.startswith("pos.") else p.grad  # rows in use
        assert used.abs().sum() > 0, f"{pname} got a zero gradient"


def _holds_modules(value: Any) -> bool:
    if isinstance(value, (nn.Module, nn.Parameter)):
        return True
    if isinstance(value, (list, tuple, set)):
        return any(_holds_modules(v) for v in value)
    return isinstance(value, dict) and any(_holds_modules(v) for v in value.values())


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_registered(name: str) -> None:
    fusion = make(name)
    state = fusion.state_dict()
    assert all(pname in state for pname, _ in fusion.named_parameters())
    for module in fusion.modules():
        for attr, value in vars(module).items():
            assert attr.startswith("_") or not _holds_modules(value), f"{type(module).__name__}.{attr}"
    if fusion.input_kind == "tokens":
        expected = {"proj.image.weight", "proj.text.weight", "proj.tabular.weight", "pos.image", "pos.tabular"}
        assert expected <= set(state)
        assert "pos.text" not in state  # text hidden states carry their positions
    fusion = fusion.double()  # every parameter follows .to(): none hides outside the registry
    inputs, masks = make_inputs(fusion.input_kind)
    assert fusion(mapped(inputs, lambda x: x.double()), masks=masks).dtype == torch.float64


@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_batch_permutation_equivariance(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams).eval()
    inputs, masks = make_inputs(fusion.input_kind)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = fusion(mapped(inputs, lambda x: x[perm]), masks={k: m[perm] for k, m in masks.items()})
    torch.testing.assert_close(permuted, fusion(inputs, masks=masks)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_runs_under_bfloat16_autocast(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams)
    inputs, masks = make_inputs(fusion.input_kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(inputs, masks=masks)
    assert out.shape == (B, OUT) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_two_input_shorthand_equals_dict_form(name: str) -> None:
    cls = FUSIONS.get(name)
    levels = cls.input_kind == "levels"
    image_dim, text_dim = (LEVEL_DIMS["image"], LEVEL_DIMS["text"]) if levels else (DIMS["image"], DIMS["text"])
    hparams = {} if levels else {"num_heads": HEADS}
    torch.manual_seed(0)
    shorthand = cls(image_dim=image_dim, text_dim=text_dim, out_dim=OUT, **hparams).eval()
    torch.manual_seed(1)
    named = cls({"image": image_dim, "text": text_dim}, OUT, **hparams).eval()
    named.load_state_dict(shorthand.state_dict())
    inputs, masks = make_inputs(cls.input_kind)
    if levels:
        masks = {"text": torch.tensor([True, False, True, True])}
    image, text = inputs["image"], inputs["text"]
    out = shorthand(image, text, **{f"{k}_mask": m for k, m in masks.items()})
    torch.testing.assert_close(named({"image": image, "text": text}, masks=masks), out, rtol=0, atol=0)
    if isinstance(shorthand, CrossAttentionFusion):
        assert shorthand.queries == ["text"]  # today's default: text queries image


# --- token inputs: padding, positions, maps ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hparams"), TOKEN_CASES)
def test_padded_tokens_have_no_influence(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams).eval()
    inputs, masks = make_inputs("tokens")
    reference = fusion(inputs, masks=masks)
    changed = dict(inputs)
    for key, mask in masks.items():
        noise = torch.randn_like(inputs[key]) * 100
        noise[0, -1] = float("nan")  # NaN in padding must not leak either
        changed[key] = torch.where(mask[..., None], inputs[key], noise)
    assert not all(torch.equal(changed[k], inputs[k]) for k in masks)
    torch.testing.assert_close(fusion(changed, masks=masks), reference, rtol=1e-5, atol=1e-6)
    for i in range(B):  # a padded sample equals the same sample alone, unpadded
        alone = {k: x[i : i + 1, : LENGTHS[k][i]] if k in LENGTHS else x[i : i + 1] for k, x in inputs.items()}
        torch.testing.assert_close(fusion(alone), reference[i : i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "hparams"), TOKEN_CASES)
def test_positional_embeddings(name: str, hparams: dict[str, Any]) -> None:
    """Text (no positional embedding by default) is a set of tokens; image patches are not."""
    fusion = make(name, **hparams).eval()
    assert fusion.positional == ["image", "tabular"]
    inputs, _ = make_inputs("tokens")
    reference = fusion(inputs)
    shuffled = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    torch.testing.assert_close(fusion({**inputs, "text": inputs["text"][:, shuffled]}), reference)
    assert not torch.allclose(fusion({**inputs, "image": inputs["image"].flip(1)}), reference)
    assert list(make(name, positional=[], **hparams).pos) == []
    assert list(make(name, positional=["text"], **hparams).pos) == ["text"]


@pytest.mark.parametrize(("name", "hparams"), TOKEN_CASES)
def test_attention_maps(name: str, hparams: dict[str, Any]) -> None:
    fusion = make(name, **hparams)
    inputs, masks = make_inputs("tokens")
    fusion(inputs, masks=masks)
    assert fusion.attention_maps() == {}  # off by default
    fusion.store_attention = True
    fusion.eval()(inputs, masks=masks)
    maps = fusion.attention_maps()
    queries = getattr(fusion, "queries", fusion.names)
    assert sorted(maps) == sorted(f"{q}->{'+'.join(n for n in DIMS if n != q)}" for q in queries)
    for query in queries:
        others = [n for n in DIMS if n != query]
        weights = maps[f"{query}->{'+'.join(others)}"]
        keys = torch.cat([masks.get(n, torch.ones(B, TOKENS[n], dtype=torch.bool)) for n in others], dim=1)
        assert weights.shape == (B, HEADS, TOKENS[query], keys.shape[1]) and not weights.requires_grad
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, HEADS, TOKENS[query]))
        assert (weights.masked_select(~keys[:, None, None]) == 0).all()
        assert (weights.masked_select(keys[:, None, None]) > 0).all()
    fusion.store_attention = False
    fusion(inputs, masks=masks)
    assert fusion.attention_maps() == {}


@pytest.mark.parametrize("cls", [CrossAttentionFusion, CoAttentionFusion])
def test_two_input_maps_for_explain(cls: type[Fusion]) -> None:
    torch.manual_seed(0)
    fusion = cls(image_dim=12, text_dim=10, out_dim=OUT, num_heads=HEADS, store_attention=True)
    inputs, masks = make_inputs("tokens")
    fusion(inputs["image"], inputs["text"], text_mask=masks["text"])
    expected = {"text->image"} if cls is CrossAttentionFusion else {"text->image", "image->text"}
    assert set(fusion.attention_maps()) == expected
    assert fusion.attention_maps()["text->image"].shape == (B, HEADS, TOKENS["text"], TOKENS["image"])


def test_cross_attention_queries() -> None:
    assert make("cross_attention").queries == list(DIMS)  # N inputs: MulT, every input queries the others
    fusion = make("cross_attention", queries=["tabular", "image"])
    assert fusion.queries == ["image", "tabular"] and list(fusion.blocks) == ["image", "tabular"]
    assert fusion.out.in_features == 2 * OUT


@pytest.mark.parametrize("name", ["cross_attention", "co_attention"])
def test_token_errors_name_the_input(name: str) -> None:
    fusion = make(name)
    inputs, masks = make_inputs("tokens")
    with pytest.raises(ValueError, match="tabular"):
        fusion({**inputs, "tabular": inputs["tabular"][..., :-1]}, masks=masks)
    with pytest.raises(ValueError, match="audio"):
        fusion({"image": inputs["image"], "text": inputs["text"], "audio": inputs["tabular"]})
    with pytest.raises(ValueError, match="text mask"):
        fusion(inputs, masks={**masks, "text": masks["text"][:, :-1]})
    with pytest.raises(ValueError, match="image has 5 tokens but max_tokens=4; raise max_tokens"):
        make(name, max_tokens=4)(inputs, masks=masks)  # tabular's 4 tokens fit
    with pytest.raises(ValueError, match="text has 7 tokens"):
        make(name, max_tokens=6, positional=["text"])(inputs, masks=masks)
    with pytest.raises(ValueError, match="audio"):
        make(name, positional=["audio"])
    with pytest.raises(ValueError, match=r"image\.axial"):
        build_fusion(name, dims={"image.axial": 4, "text": 4}, out_dim=4, num_heads=2)
    with pytest.raises(ValueError, match="divisible"):
        make(name, num_heads=5)
    with pytest.raises(ValueError, match="num_layers"):
        make(name, num_layers=0)
    if name == "cross_attention":
        with pytest.raises(ValueError, match="audio"):
            make(name, queries=["audio"])
        with pytest.raises(ValueError, match="at least one"):
            make(name, queries=[])


# --- levels: presence ----------------------------------------------------------------------------------------------


def test_hierarchical_absent_input_has_no_influence() -> None:
    fusion = make("hierarchical").eval()
    inputs, _ = make_inputs("levels")
    present = torch.tensor([True, False, True, True])
    reference = fusion(inputs, masks={"tabular": present})
    weights = fusion.modality_weights()
    assert weights is not None and weights.shape == (B, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B))
    assert weights[1, 2] == 0 and (weights[present] > 0).all()
    changed = [x.clone() for x in inputs["tabular"]]
    for x in changed:
        x[1] = torch.randn_like(x[1]) * 100
    changed[0][1, 0] = float("nan")
    for x in changed:
        x.requires_grad_(True)
    out = fusion({**inputs, "tabular": changed}, masks={"tabular": present})
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fusion.parameters())
    assert all((x.grad[1] == 0).all() and x.grad[present].abs().sum() > 0 for x in changed)
    torch.testing.assert_close(fusion(inputs), fusion(inputs, masks={"tabular": torch.ones(B, dtype=torch.bool)}))


def test_hierarchical_level_and_modality_weights() -> None:
    fusion = make("hierarchical")
    assert isinstance(fusion, HierarchicalFusion) and fusion.num_levels == 2
    torch.testing.assert_close(fusion.level_weights(), torch.full((2,), 0.5))
    assert fusion.modality_weights() is None and fusion.attention_maps() == {}
    inputs, _ = make_inputs("levels")
    with torch.no_grad():
        fusion.level_logits.copy_(torch.tensor([3.0, -3.0]))
    fusion(inputs)
    weights = fusion.modality_weights()
    assert weights is not None and not weights.requires_grad
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B))
    with torch.no_grad():  # gates averaged over features, then over levels weighted by the level weights
        gates = [
            unit([norm(inputs[n][level]) for norm, n in zip(norms, fusion.names, strict=True)])[1].mean(-1)
            for level, (unit, norms) in enumerate(zip(fusion.units, fusion.norms, strict=True))
        ]
        share = fusion.level_weights()
        torch.testing.assert_close(weights, share[0] * gates[0] + share[1] * gates[1])
    sigmoid = make("hierarchical", level_weighting="sigmoid")
    torch.testing.assert_close(sigmoid.level_weights(), torch.full((2,), 0.5))
    sigmoid(inputs)
    torch.testing.assert_close(sigmoid.modality_weights().sum(dim=1), torch.ones(B))


def test_hierarchical_errors_name_the_input() -> None:
    fusion = make("hierarchical")
    inputs, _ = make_inputs("levels")
    with pytest.raises(ValueError, match="tabular level 1"):
        fusion({**inputs, "tabular": [inputs["tabular"][0], torch.randn(B, 5)]})
    with pytest.raises(ValueError, match="tabular must have 2 levels"):
        fusion({**inputs, "tabular": inputs["tabular"][:1]})
    with pytest.raises(ValueError, match="audio"):
        fusion({"image": inputs["image"], "text": inputs["text"], "audio": inputs["tabular"]})
    with pytest.raises(ValueError, match="tabular mask"):
        fusion(inputs, masks={"tabular": torch.ones(B)})
    with pytest.raises(ValueError, match="equal length"):
        HierarchicalFusion({"image": [8, 16], "text": [20, 20, 20]}, OUT)
    with pytest.raises(ValueError, match="equal length"):
        HierarchicalFusion({"image": 8, "text": 8}, OUT)
    with pytest.raises(ValueError, match="level_weighting"):
        HierarchicalFusion(LEVEL_DIMS, OUT, level_weighting="max")  # type: ignore[arg-type]


# --- learning ------------------------------------------------------------------------------------------------------


def parity_task(
    kind: str, n: int, seed: int, noise: float = 0.05
) -> tuple[dict[str, Any], dict[str, Any], torch.Tensor]:
    """Label = XOR of the signs of three signals, one per input, so that no two inputs tell anything about it.

    Tokens: the signal sits in feature 0 of one random real token per input, marked by feature 1 = 1; texts
    have random lengths. Levels: the signal is feature 0 of each input's last level.
    """
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (3, n), generator=g)
    signals = (signs * 2 - 1) * (0.5 + torch.rand(3, n, generator=g))
    label = (signs.sum(0) % 2).float()
    rows = torch.arange(n)
    if kind == "levels":
        inputs = {name: [noise * torch.randn(n, d, generator=g) for d in dims] for name, dims in LEVEL_DIMS.items()}
        for signal, levels in zip(signals, inputs.values(), strict=True):
            levels[-1][:, 0] = signal
        return inputs, {}, label
    inputs = {name: noise * torch.randn(n, TOKENS[name], d, generator=g) for name, d in DIMS.items()}
    lengths = {
        "image": torch.full((n,), TOKENS["image"]),
        "text": torch.randint(2, TOKENS["text"] + 1, (n,), generator=g),
    }
    lengths["tabular"] = torch.full((n,), TOKENS["tabular"])
    for signal, (name, x) in zip(signals, inputs.items(), strict=True):
        where = (torch.rand(n, generator=g) * lengths[name]).long()
        x[rows, where, 0], x[rows, where, 1] = signal, 1.0
    return inputs, {"text": torch.arange(TOKENS["text"]) < lengths["text"][:, None]}, label


def accuracy(
    model: nn.Module, fusion: Fusion, inputs: dict[str, Any], masks: dict[str, Any], label: torch.Tensor
) -> float:
    with torch.no_grad():
        return float(((model(fusion(inputs, masks=masks)).squeeze(-1) > 0).float() == label).float().mean())


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_task_that_needs_all_three_inputs(name: str) -> None:
    """Adam + an MLP head fit 3-input parity; on fresh samples the fusion beats every one of its inputs zeroed."""
    hparams = {"ffn_mult": 2} if FUSIONS.get(name).input_kind == "tokens" else {}
    fusion = make(name, dropout=0.0, **hparams)
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(OUT, 32), nn.GELU(), nn.Linear(32, 1))
    inputs, masks, label = parity_task(fusion.input_kind, n=256, seed=0)
    optimizer = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(100):
        logits = head(fusion(inputs, masks=masks)).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fusion.eval()
    inputs, masks, label = parity_task(fusion.input_kind, n=1024, seed=1)
    held_out = accuracy(head, fusion, inputs, masks, label)
    assert held_out > 0.9, f"{name}: held-out accuracy {held_out:.2f}"
    zeros = mapped(inputs, torch.zeros_like)
    for zeroed in DIMS:
        without = accuracy(head, fusion, {**inputs, zeroed: zeros[zeroed]}, masks, label)
        assert without < 0.65, f"{name}: held-out accuracy {without:.2f} with {zeroed} zeroed"
