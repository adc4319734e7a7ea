"""Tests of single fusions and the fusion helpers: the masks of the token fusions (padding ignored, equal to the
unpadded sample, mask errors) and their attention maps, the gated and hierarchical fusions' gates and level weights,
bilinear and tensor fusion, constructor errors, ``masked_mean`` and ``signed_sqrt``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fusion_helpers import IMAGE_LENGTHS, NAMES, NI, NT, OUT, TEXT_LENGTHS, B, make, make_inputs
from torch import nn

from medfusion.fusion import (
    FUSIONS,
    BilinearFusion,
    CoAttentionFusion,
    CrossAttentionFusion,
    GatedFusion,
    HierarchicalFusion,
    TensorFusion,
    masked_mean,
    signed_sqrt,
)

TOKEN_NAMES = [n for n in NAMES if FUSIONS.get(n).input_kind == "tokens"]
# Token fusions in several configurations: default, the other direction, deeper stacks.
TOKEN_CASES = [
    ("cross_attention", {}),
    ("cross_attention", {"queries": ["image"], "num_layers": 2}),
    ("co_attention", {}),
    ("co_attention", {"num_layers": 2}),
]


pytestmark = pytest.mark.usefixtures("one_thread")


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
