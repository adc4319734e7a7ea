"""Imbalance and auxiliary objectives: balanced sampling (one process and DDP ranks), post-hoc logit
adjustment, modality-disagreement supervision, SupCon/CLIP terms, and per-sample loss reduction."""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import lightning as L
import pytest
import torch
from test_models import SMALL_IMAGE, SMALL_TEXT, VOCAB, fit_and_score, toy_samples
from torch import nn
from torch.utils.data import DistributedSampler, RandomSampler, WeightedRandomSampler

from medfusion.data import Collate, DemoDataModule
from medfusion.data.demo import make_demo_data
from medfusion.data.samplers import DistributedWeightedSampler, class_balanced_weights
from medfusion.fusion import GatedFusion
from medfusion.heads import MLPHead, MoEHead
from medfusion.losses import CrossEntropyLoss, FocalLoss, LogitAdjustedLoss, clip_loss, supcon_loss
from medfusion.models import ImageClassifier, MultimodalClassifier

# tiny tensors: one intra-op thread is faster than two on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

LABELS_90_9_1 = [0] * 90 + [1] * 9 + [2] * 1


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


def toy_batch(n: int = 8, num_classes: int = 3) -> dict:
    return Collate(0)([{**s, "label": i % num_classes} for i, s in enumerate(toy_samples(n))])


# --------------------------------------------------------------------------------------------- sampler
def test_balanced_sampler_draws_classes_near_uniformly() -> None:
    weights = class_balanced_weights(LABELS_90_9_1)
    sampler = DistributedWeightedSampler(weights, num_samples=30_000, seed=3)
    counts = Counter(LABELS_90_9_1[i] for i in sampler)
    assert len(sampler) == 30_000 and sum(counts.values()) == 30_000
    expected = 30_000 / 3
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in range(3))
    assert chi2 < 13.8, counts  # chi-square, 2 dof, p = 0.001
    # On one process it is exactly torch's WeightedRandomSampler with a seed + epoch generator.
    reference = WeightedRandomSampler(weights, 30_000, generator=torch.Generator().manual_seed(3))
    assert list(sampler) == list(reference)


def test_balanced_sampler_is_deterministic_per_epoch_and_differs_across_epochs() -> None:
    weights = class_balanced_weights(LABELS_90_9_1)
    first, again = DistributedWeightedSampler(weights, seed=1), DistributedWeightedSampler(weights, seed=1)
    assert len(first) == len(LABELS_90_9_1)
    epoch0 = list(first)
    assert epoch0 == list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != epoch0
    again.set_epoch(1)
    assert list(first) == list(again)
    assert list(DistributedWeightedSampler(weights, seed=2)) != epoch0


def test_balanced_sampler_ranks_take_disjoint_slices_of_one_draw() -> None:
    weights = class_balanced_weights(LABELS_90_9_1)
    ranks = [DistributedWeightedSampler(weights, num_samples=101, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for sampler in ranks:
        assert isinstance(sampler, DistributedSampler)  # so Lightning keeps it under DDP
        sampler.set_epoch(4)
    draws = [list(s) for s in ranks]
    assert [len(d) for d in draws] == [len(s) for s in ranks] == [51, 51]  # 101 rounded up to a multiple of 2
    whole = DistributedWeightedSampler(weights, num_samples=102, num_replicas=1, rank=0, seed=5)
    whole.set_epoch(4)
    merged = [i for pair in zip(*draws, strict=True) for i in pair]
    assert merged == list(whole)  # rank r holds positions r, r + 2, ... of the same global draw


def test_balanced_sampler_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        DistributedWeightedSampler([0.0, 0.0])
    with pytest.raises(ValueError, match="num_samples"):
        DistributedWeightedSampler([1.0], num_samples=0)


@pytest.fixture(scope="module")
def long_tail_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("longtail")
    make_demo_data(root, num_samples=60, image_size=16, long_tail=True)
    return str(root)


def demo_data(root: str, **kwargs) -> DemoDataModule:
    return DemoDataModule(
        root=root, num_samples=60, demo_image_size=16, image_size=16, long_tail=True, modalities=["image"], **kwargs
    )


def test_datamodule_uses_the_balanced_sampler(long_tail_root: str) -> None:
    data = demo_data(long_tail_root, sampler="balanced", batch_size=8)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, DistributedWeightedSampler)
    labels = data._labels["train"]
    assert len(loader.sampler) == len(labels) == len(data.datasets["train"])
    assert min(data.class_counts) < max(data.class_counts)
    per_class = Counter()
    for label, weight in zip(labels, loader.sampler.weights.tolist(), strict=True):
        per_class[label] += weight
    assert all(total == pytest.approx(1.0) for total in per_class.values())  # each class: equal total mass
    assert next(iter(loader))["image"].shape == (8, 3, 16, 16)
    plain = demo_data(long_tail_root, batch_size=8)
    plain.setup("fit")
    assert isinstance(plain.train_dataloader().sampler, RandomSampler)
    with pytest.raises(ValueError, match="sampler"):
        demo_data(long_tail_root, sampler="oversample")


def test_balanced_sampler_with_a_class_aware_loss_warns(long_tail_root: str) -> None:
    data = demo_data(long_tail_root, sampler="balanced", batch_size=8, verify_images=False)
    model = ImageClassifier(
        num_classes=data.num_classes,
        class_counts=data.class_counts,
        image_encoder=SMALL_IMAGE,
        loss=partial(CrossEntropyLoss, class_weights="inverse"),
        scheduler="constant",
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.warns(UserWarning, match="twice"):
        trainer.fit(model, datamodule=data)
    assert model.class_aware_corrections() == ["class weights in the loss"]
    focal = ImageClassifier(num_classes=3, class_counts=[5, 3, 1], image_encoder=SMALL_IMAGE, loss=FocalLoss)
    assert focal.class_aware_corrections() == []
    posthoc = ImageClassifier(num_classes=3, class_counts=[5, 3, 1], image_encoder=SMALL_IMAGE, logit_adjustment=1.0)
    assert posthoc.class_aware_corrections() == ["post-hoc logit_adjustment"]


# ----------------------------------------------------------------------------------- logit adjustment
def test_posthoc_logit_adjustment_with_uniform_counts_changes_nothing() -> None:
    model = ImageClassifier(num_classes=3, class_counts=[7, 7, 7], image_encoder=SMALL_IMAGE, logit_adjustment=1.0)
    model.eval()
    batch = toy_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.predict_logits(batch), model(batch))


def test_posthoc_logit_adjustment_moves_predictions_to_the_rare_class() -> None:
    counts = [1000, 10, 1]
    model = ImageClassifier(num_classes=3, class_counts=counts, image_encoder=SMALL_IMAGE, logit_adjustment=0.5)
    model.eval()
    batch = toy_batch(16)
    with torch.no_grad():
        raw, adjusted = model(batch), model.predict_logits(batch)
        probs = model.predict_step(batch, 0)["probs"]
    log_prior = torch.tensor(counts, dtype=torch.float).div(sum(counts)).mul(3).log()
    torch.testing.assert_close(adjusted, raw - 0.5 * log_prior)
    torch.testing.assert_close(probs, adjusted.softmax(-1))
    assert (probs[:, 2] > raw.softmax(-1)[:, 2]).all()
    assert (adjusted.argmax(-1) == 2).sum() > (raw.argmax(-1) == 2).sum()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_posthoc_logit_adjustment_is_not_used_in_training() -> None:
    model = ImageClassifier(
        num_classes=3, class_counts=[1000, 10, 1], image_encoder=SMALL_IMAGE, logit_adjustment=1.0
    ).eval()  # eval: no dropout, so two forwards agree
    batch = toy_batch()
    loss = model.training_step(batch, 0)
    torch.testing.assert_close(loss, model.criterion(model(batch), batch["label"]))


def test_posthoc_logit_adjustment_refuses_double_correction_and_missing_counts() -> None:
    with pytest.raises(ValueError, match="LogitAdjustedLoss"):
        ImageClassifier(
            num_classes=3,
            class_counts=[5, 3, 1],
            image_encoder=SMALL_IMAGE,
            loss=LogitAdjustedLoss,
            logit_adjustment=1.0,
        )
    with pytest.raises(ValueError, match="class_counts"):
        ImageClassifier(num_classes=3, image_encoder=SMALL_IMAGE, logit_adjustment=1.0)


# ---------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize(
    "loss",
    [
        CrossEntropyLoss(),
        CrossEntropyLoss([50, 5, 1], label_smoothing=0.1, class_weights="inverse"),
        FocalLoss([50, 5, 1], gamma=2.0, alpha="inverse"),
        LogitAdjustedLoss([50, 5, 1]),
    ],
    ids=["ce", "ce_weighted_smoothed", "focal_alpha", "logit_adjusted"],
)
def test_per_sample_losses_average_to_the_loss(loss: nn.Module) -> None:
    logits, target = torch.randn(10, 3), torch.tensor([0, 1, 2, 0, 0, 1, 0, 2, 0, 0])
    per_sample = loss(logits, target, reduction="none")
    assert per_sample.shape == (10,)
    torch.testing.assert_close(per_sample.mean(), loss(logits, target))


# ------------------------------------------------------------------------------ multimodal objectives
def multimodal(**kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=3, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT, vocab_size=VOCAB, **kwargs
    )


def by_hand_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """0.5 [KL(p||q) + KL(q||p)] of the two softmaxes."""
    log_p, log_q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return 0.5 * ((log_p.exp() * (log_p - log_q)).sum(-1) + (log_q.exp() * (log_q - log_p)).sum(-1))


def test_disagreement_loss_equals_the_formula_and_trains_both_aux_heads() -> None:
    model = multimodal(aux_heads=True, aux_weights=(0.3, 0.5, 2.0)).eval()
    batch = toy_batch(12)
    encoded = model.encode(batch)
    image, text = encoded["image"], encoded["text"]
    fused_logits = model.head(model.fuse(encoded))
    heads = model.unimodal_heads
    image_logits, text_logits = heads["image"](image.pooled), heads["text"](text.pooled)
    target = batch["label"]
    kl = by_hand_kl(image_logits, text_logits).detach()
    clip = kl.median().item()  # half of the samples are clipped
    model.hparams.disagreement_clip = clip
    weight = 1.0 + kl.clamp(max=clip)
    assert (kl > clip).any() and (kl < clip).any()

    logits, loss, terms = model.training_objective(batch)
    fusion_per_sample = nn.functional.cross_entropy(fused_logits, target, reduction="none")
    expected = (
        0.3 * nn.functional.cross_entropy(image_logits, target)
        + 0.5 * nn.functional.cross_entropy(text_logits, target)
        + 2.0 * (weight * fusion_per_sample).mean()
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, fused_logits)
    torch.testing.assert_close(terms["disagreement"], kl.mean())
    torch.testing.assert_close(terms["disagreement_weight"], weight.mean())
    assert set(terms) == {"loss_image", "loss_text", "disagreement", "disagreement_weight"}

    loss.backward()
    for head in (heads["image"], heads["text"], model.head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_disagreement_weight_is_one_when_the_modalities_agree_or_during_warmup() -> None:
    batch = toy_batch(6)
    model = multimodal(aux_heads=True, aux_weights=(1.0, 1.0, 1.0)).eval()
    for head in model.unimodal_heads.values():  # identical (zero) unimodal logits: exact agreement
        nn.init.zeros_(head.net[-1].weight)
        nn.init.zeros_(head.net[-1].bias)
    logits, loss, terms = model.training_objective(batch)
    assert terms["disagreement"].item() == 0.0 and terms["disagreement_weight"].item() == 1.0
    torch.testing.assert_close(loss, 2 * math.log(3) + model.criterion(logits, batch["label"]))

    warming = multimodal(aux_heads=True, disagreement_warmup_steps=10).eval()  # global_step 0: no emphasis yet
    _, _, terms = warming.training_objective(batch)
    assert terms["disagreement"] > 0 and terms["disagreement_weight"].item() == 1.0


def test_aux_heads_need_a_loss_with_per_sample_reduction() -> None:
    with pytest.raises(ValueError, match="reduction='none'"):
        multimodal(aux_heads=True, loss=lambda class_counts: nn.CrossEntropyLoss())


def test_supcon_and_clip_terms_are_added_and_their_projectors_learn() -> None:
    model = multimodal(supcon_weight=0.5, clip_weight=0.25, projection_dim=16).eval()
    batch = toy_batch(9)  # labels 0, 1, 2 three times: every anchor has positives
    logits, loss, terms = model.training_objective(batch)
    encoded = model.encode(batch)
    fused = model.fuse(encoded)
    target = batch["label"]
    supcon = supcon_loss(model.supcon_projector(fused), target, 0.07)
    projectors = model.clip_projectors
    clip = clip_loss(
        projectors["image"](encoded["image"].pooled),
        projectors["text"](encoded["text"].pooled),
        model.clip_logit_scale,
    )
    torch.testing.assert_close(terms["supcon"], supcon)
    torch.testing.assert_close(terms["clip"], clip)
    torch.testing.assert_close(loss, model.criterion(logits, target) + 0.5 * supcon + 0.25 * clip)
    assert model.supcon_projector[-1].out_features == 16
    assert model.clip_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    loss.backward()
    trained = (model.supcon_projector, projectors["image"], projectors["text"])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in trained for p in m.parameters())
    assert model.clip_logit_scale.grad is not None

    plain = multimodal()
    names = [name for name, _ in plain.named_parameters()]
    assert not any(("supcon" in n or "clip" in n or "unimodal_heads" in n) for n in names)
    assert not hasattr(plain, "unimodal_heads") and not hasattr(plain, "clip_projectors")
    assert set(plain.training_objective(batch)[2]) == set()


def test_everything_together_still_learns_a_task_that_needs_both_modalities() -> None:
    """Aux heads + SupCon + CLIP + an MoE head (whose balance losses are added for all three heads) on a
    gated fusion: the model learns the label made of both bits, and every term and routing stat is logged."""
    model = MultimodalClassifier(
        num_classes=4,
        image_encoder=SMALL_IMAGE,
        text_encoder=SMALL_TEXT,
        vocab_size=VOCAB,
        fusion=GatedFusion,
        fusion_dim=64,
        head=partial(MoEHead, num_experts=4, top_k=2, expert_hidden=32),
        aux_heads=True,
        supcon_weight=0.1,
        clip_weight=0.1,
        lr=2e-3,
        scheduler="constant",
    )
    accuracy = fit_and_score(model, toy_samples(64), lambda image_bit, text_bit: 2 * image_bit + text_bit, epochs=8)
    assert accuracy > 0.9
    logged = set(model.trainer.callback_metrics)
    expected = {"loss_image", "loss_text", "disagreement", "disagreement_weight", "supcon", "clip"}
    expected |= {"fusion_weight_image", "fusion_weight_text"}
    expected |= {"moe_balance", "moe_load_0", "moe_importance_3"}
    assert {f"train/{name}" for name in expected} <= logged
    # the balance loss of each aux head's MoE too, under a name that says which modality's head it is
    for name in ("image", "text"):
        assert any(key.endswith("moe_balance") and name in key for key in logged), (name, sorted(logged))
    loads = [model.trainer.callback_metrics[f"train/moe_load_{k}"].item() for k in range(4)]
    assert sum(loads) == pytest.approx(2.0, abs=1e-4)  # top_k experts per sample


def test_head_factory_builds_aux_heads_like_the_main_head() -> None:
    model = multimodal(aux_heads=True, head=partial(MLPHead, hidden_dims=(32,)))
    heads = model.unimodal_heads
    assert list(heads) == ["image", "text"]
    assert type(heads["image"]) is type(heads["text"]) is type(model.head) is MLPHead
    assert heads["image"].in_dim == model.encoders["image"].out_dim
    assert heads["text"].in_dim == model.encoders["text"].out_dim
