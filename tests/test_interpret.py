"""Grad-CAM finds what a model looks at; attention, gate and routing maps read right; explanations render (models
with N modalities: test_interpret_modalities.py)."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from PIL import Image

from medfusion.data import Collate
from medfusion.data.tokenizer import build_tokenizer
from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import FUSIONS, CrossAttentionFusion
from medfusion.heads import MLPHead, MoEHead
from medfusion.interpret import (
    attention_maps,
    explain_batch,
    explanation_figure,
    gate_values,
    gradcam,
    gradcam_target,
    patch_attention,
    routing_weights,
    save_explanations,
)
from medfusion.models import ImageClassifier, MultimodalClassifier, TextClassifier

# tiny tensors: one intra-op thread is faster than two on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 16  # the bright square: the maps of this CNN peak ~5 px up-left of what it sees (receptive fields)
SIZE = 48  # image size


def dilated_resnet() -> ImageEncoder:
    """timm's tiny ``test_resnet`` with output stride 8: its last stage is 6x6 at 48 px (2x2 at stride 32),
    fine enough to say where a square is; training at 192 px would cost 16x more."""
    encoder = ImageEncoder("test_resnet")
    encoder.model = timm.create_model("test_resnet", num_classes=0, output_stride=8)
    return encoder


def squares(n: int, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """Noise images; odd samples (class 1) carry a bright SIDE x SIDE square at a random place, given as (y, x)."""
    images = 0.5 * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.arange(n) % 2
    corners = torch.randint(0, SIZE - SIDE + 1, (n, 2), generator=generator)
    for i in labels.nonzero().squeeze(1).tolist():
        y, x = corners[i].tolist()
        images[i, :, y : y + SIDE, x : x + SIDE] += 2.0
    return {"id": [f"s{i}" for i in range(n)], "image": images, "label": labels}, corners


def test_gradcam_of_a_model_trained_on_bright_squares_peaks_on_the_square() -> None:
    """Class 1 = a bright square somewhere in noise; a linear head on the pooled features (the CAM setting).
    Behind the default MLP head's LayerNorm the logit is invariant to scaling the (centred) hidden features, so
    Grad-CAM's channel weights stop measuring evidence once training saturates: there ~80% of the peaks, and some
    maps peak off the square; with a linear, batch-norm or norm-free head ~100%."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = ImageClassifier(num_classes=2, image_encoder=dilated_resnet, head=partial(MLPHead, hidden_dims=()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(100):
        batch, _ = squares(16, generator)
        loss = model.criterion(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    batch, corners = squares(64, generator)
    model.eval()
    with torch.no_grad():
        assert (model(batch).argmax(-1) == batch["label"]).float().mean() > 0.95
    positive = batch["label"] == 1
    cams = gradcam(model, {"image": batch["image"][positive]}, targets=[1] * int(positive.sum()))
    assert cams.shape == (32, SIZE, SIZE)
    hits, contrast = 0, []
    for cam, (y, x) in zip(cams, corners[positive].tolist(), strict=True):
        # the centre of the maximal pixels: a map upsampled from 6x6 has flat maxima along the image border
        peak_y, peak_x = (cam >= cam.max() - 1e-4).nonzero().float().mean(dim=0).tolist()
        # pixels between the peak and the square, per axis (0 = inside)
        gap_y, gap_x = max(y - peak_y, peak_y - (y + SIDE - 1), 0), max(x - peak_x, peak_x - (x + SIDE - 1), 0)
        hits += max(gap_y, gap_x) <= 2
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[y : y + SIDE, x : x + SIDE] = True
        contrast.append(cam[inside].mean() - cam[~inside].mean())
    assert hits >= 0.8 * len(cams), f"{hits}/{len(cams)} peaks on the square"
    assert min(contrast) > 0


def test_gradcam_target_layers() -> None:
    cnn = ImageEncoder("test_resnet")
    layer, reshape = gradcam_target(cnn)
    assert layer is cnn.model.layer4 and reshape is None

    vit = ImageEncoder("test_vit")
    layer, reshape = gradcam_target(vit)
    assert layer is vit.model.blocks[-1].norm1
    tokens = torch.randn(2, 1 + 16, 64)  # class token + a 4x4 grid (64 px: not the 10x10 grid_size of 160 px)
    patch_map = reshape(tokens)
    assert patch_map.shape == (2, 64, 4, 4)
    torch.testing.assert_close(patch_map[:, :, 1, 2], tokens[:, 1 + 4 + 2])
    with pytest.raises(ValueError, match="square"):
        reshape(torch.randn(2, 1 + 12, 64))

    swin = ImageEncoder("swin_tiny_patch4_window7_224")  # channels-last stages
    layer, reshape = gradcam_target(swin)
    assert layer is swin.model.layers[-1] and reshape(torch.zeros(1, 7, 7, 768)).shape == (1, 768, 7, 7)

    cnn.model.feature_info = []
    with pytest.raises(ValueError, match="test_resnet"):
        gradcam_target(cnn)


def test_gradcam_on_a_vit_leaves_no_hook() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=3, image_encoder=partial(ImageEncoder, "test_vit")).eval()
    batch = {"image": torch.randn(2, 3, 64, 64)}
    cams = gradcam(model, batch)
    assert cams.shape == (2, 64, 64)
    assert cams.min() >= 0 and cams.max() <= 1 and all(cam.std() > 0 for cam in cams)
    layer = model.encoders["image"].model.blocks[-1].norm1
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        gradcam(model, batch)
    with pytest.raises(ValueError, match="targets"):
        gradcam(model, batch, targets=[0])
    assert not layer._forward_hooks and not layer._forward_pre_hooks and not layer._backward_hooks


VOCAB = 64


def multimodal(small_bert: str, fusion: str | partial, vocab_size: int = VOCAB, **kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=3,
        image_encoder=partial(ImageEncoder, "test_resnet"),
        text_encoder=partial(TextEncoder, small_bert),
        fusion=FUSIONS.get(fusion) if isinstance(fusion, str) else fusion,
        fusion_dim=32,
        vocab_size=vocab_size,
        **kwargs,
    )


def text_batch(n: int = 3, size: int = 64) -> dict:
    """Texts of different lengths ([CLS]=2 ... [SEP]=3, padded with 0) and noise images (2x2 test_resnet maps)."""
    samples = [
        {
            "id": f"p{i}",
            "label": i % 3,
            "present": {"image": True, "text": True},
            "image": torch.randn(3, size, size),
            "text": [2, *range(10, 12 + 2 * i), 3],
        }
        for i in range(n)
    ]
    return Collate(pad_token_id=0)(samples)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_gradcam_through_any_fusion_with_frozen_encoders_restores_the_model(fusion: str, small_bert: str) -> None:
    torch.manual_seed(0)
    model = multimodal(small_bert, fusion, freeze_encoders=True).train()
    model.head.requires_grad_(False)  # a flag gradcam must not reset
    for p in model.fusion.parameters():
        p.grad = torch.ones_like(p)  # accumulated gradients survive
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    batch = text_batch()
    with torch.no_grad():
        cams = gradcam(model, batch, targets=[0, 1, 2])
    assert cams.shape == (3, 64, 64) and cams.min() >= 0 and cams.max() <= 1
    # each map is scaled to a maximum of 1, or all 0 where no patch raises the (here random) target
    peaks = cams.amax(dim=(1, 2))
    assert ((peaks > 0.99) | (peaks == 0)).all() and (peaks > 0.99).any()
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert modes["encoders.image"] is False and modes["fusion"] is True
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.fusion.parameters())
    assert not batch["image"].requires_grad
    layer, _ = gradcam_target(model.encoders["image"])
    assert not layer._forward_hooks and not layer._backward_hooks


def test_attention_maps_of_attention_fusions(small_bert: str) -> None:
    torch.manual_seed(0)
    batch = text_batch()
    real = batch["text"]["attention_mask"].bool()
    length = batch["text"]["input_ids"].shape[1]
    for fusion in ("cross_attention", "co_attention"):
        model = multimodal(small_bert, fusion).train()
        maps = patch_attention(model, batch)
        assert maps.shape == (3, length, 2, 2)  # 64 px -> 2x2 patches
        # each real text token's head-averaged softmax over the patches
        torch.testing.assert_close(maps.sum(dim=(2, 3))[real], torch.ones(int(real.sum())))
        assert model.fusion.store_attention is False and model.training and model.fusion.training

    model = multimodal(small_bert, partial(CrossAttentionFusion, queries=["image"]))
    assert set(attention_maps(model, batch)) == {"image->text"}
    maps = patch_attention(model, batch, image="image")
    assert maps.shape == (3, length, 2, 2)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(3, 2, 2))  # each patch over the real tokens
    assert (maps[~real] == 0).all()

    assert patch_attention(multimodal(small_bert, "concat"), batch) is None
    assert attention_maps(multimodal(small_bert, "concat"), batch) == {}
    image_model = ImageClassifier(num_classes=3, image_encoder=partial(ImageEncoder, "test_resnet"))
    assert patch_attention(image_model, batch) is None and attention_maps(image_model, batch) == {}


def test_gate_values_and_routing_weights(small_bert: str) -> None:
    torch.manual_seed(0)
    batch = text_batch(4)
    for fusion in ("gated", "hierarchical"):
        gates = gate_values(multimodal(small_bert, fusion), batch)
        assert list(gates) == ["image", "text"] and gates["image"].shape == (4,)
        assert ((gates["image"] > 0) & (gates["image"] < 1)).all()
        torch.testing.assert_close(gates["image"] + gates["text"], torch.ones(4))
    model = multimodal(small_bert, "concat", head=partial(MoEHead, num_experts=3, top_k=2)).train()
    weights = routing_weights(model, batch)
    assert weights.shape == (4, 3)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    assert ((weights > 0).sum(dim=1) == 2).all() and model.head.training
    assert gate_values(model, batch) is None
    assert routing_weights(multimodal(small_bert, "gated"), batch) is None


def test_explanations_of_an_image_model_are_saved_one_png_per_id(tmp_path) -> None:
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=3, image_encoder=partial(ImageEncoder, "test_resnet")).train()
    pixels = torch.rand(3, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = {"id": ["a/b", "c d", "a_b"], "image": (pixels - mean) / std, "label": torch.tensor([0, 1, 2])}
    explanations = explain_batch(model, batch)
    assert model.training and model.encoders["image"].training
    first = explanations[0]
    assert (first.id, first.label) == ("a/b", 0)
    torch.testing.assert_close(first.images["image"], pixels[0])
    assert list(first.cams) == ["image"] and first.cams["image"].shape == (64, 64)
    assert first.tokens is None and first.attention == {} and first.feature_attention == {}
    assert first.gate is None and first.routing is None
    torch.testing.assert_close(torch.stack([e.probs for e in explanations]).sum(-1), torch.ones(3))

    paths = save_explanations(explanations, ["nv", "mel", "bcc"], tmp_path / "figures")
    assert [p.name for p in paths] == ["a_b.png", "c_d.png", "a_b-1.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100


def test_explanations_of_a_multimodal_model_decode_tokens(tmp_path, small_bert: str) -> None:
    torch.manual_seed(0)
    texts = ["pigmented lesion on the back", "irregular border and blue white veil", "lesion on the arm"]
    tokenizer = build_tokenizer("wordpiece", texts * 2, vocab_size=VOCAB)
    model = multimodal(
        small_bert,
        "cross_attention",
        vocab_size=len(tokenizer),
        head=partial(MoEHead, num_experts=3, top_k=2),
    )
    samples = [
        {
            "id": f"t{i}",
            "label": i,
            "present": {"image": True, "text": True},
            "image": torch.randn(3, 64, 64),
            "text": tokenizer(text)["input_ids"],
        }
        for i, text in enumerate(texts)
    ]
    batch = Collate(pad_token_id=tokenizer.pad_token_id)(samples)
    explanations = explain_batch(model, batch, tokenizer=tokenizer)
    for explanation, text in zip(explanations, texts, strict=True):
        assert explanation.tokens == tokenizer.tokenize(text)  # no [CLS], [SEP] nor [PAD]
        attention = explanation.attention["text->image"]
        assert list(explanation.attention) == ["text->image"] and attention.shape == (len(explanation.tokens), 2, 2)
        torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(len(explanation.tokens)))
        assert explanation.routing.shape == (3,) and explanation.cams["image"].shape == (64, 64)
    assert model.fusion.store_attention is False
    # image, Grad-CAM, probabilities, routing, then the 2 most focused tokens
    assert len(explanation_figure(explanations[1], ["nv", "mel", "bcc"], max_tokens=2).axes) == 4 + 2

    paths = save_explanations(explanations, ["nv", "mel", "bcc"], tmp_path)
    assert [p.name for p in paths] == ["t0.png", "t1.png", "t2.png"]
    for path in paths:
        with Image.open(path) as image:
            image.verify()


def test_explanations_of_a_text_model(tmp_path, small_bert: str) -> None:
    model = TextClassifier(num_classes=3, text_encoder=partial(TextEncoder, small_bert), vocab_size=VOCAB)
    batch = text_batch()
    del batch["image"]
    explanations = explain_batch(model, batch)
    assert all(e.images == {} and e.cams == {} and e.tokens is None and e.attention == {} for e in explanations)
    assert len(explanation_figure(explanations[0], ["nv", "mel", "bcc"]).axes) == 1
    for path in save_explanations(explanations, ["nv", "mel", "bcc"], tmp_path):
        with Image.open(path) as image:
            image.verify()
