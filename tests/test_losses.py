"""Behaviour of the losses: reductions to CE, imbalance corrections, contrastive and disagreement terms."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from medfusion.losses import (
    LOSSES,
    CrossEntropyLoss,
    FocalLoss,
    LogitAdjustedLoss,
    build_loss,
    class_weights_from_counts,
    clip_loss,
    disagreement_weight,
    logit_adjust,
    supcon_loss,
    symmetric_kl,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "loss"


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return 3 * torch.randn(64, 4, generator=g), torch.randint(0, 4, (64,), generator=g)


# --- cross-entropy and class weights --------------------------------------------------------------


def test_plain_ce_equals_torch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    assert torch.allclose(CrossEntropyLoss()(logits, target), F.cross_entropy(logits, target))
    smoothed = CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    assert torch.allclose(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_inverse_weights_favour_rare_classes() -> None:
    counts = [100, 10, 1]
    for scheme in ("inverse", "sqrt_inverse", "effective"):
        w = class_weights_from_counts(counts, scheme)  # type: ignore[arg-type]
        assert w[0] < w[1] < w[2], scheme
        assert w.mean().item() == pytest.approx(1.0)
    inverse = class_weights_from_counts(counts, "inverse")
    assert inverse[2] / inverse[0] == pytest.approx(100.0)


def test_weighted_ce_matches_reference(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    counts = [40, 20, 10, 5]
    loss = CrossEntropyLoss(class_weights="inverse", class_counts=counts)(logits, target)
    w = 1.0 / torch.tensor(counts, dtype=torch.float32)
    w = w / w.mean()
    per_sample = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(loss, (w[target] * per_sample).sum() / w[target].sum())


def test_weighted_ce_with_uniform_counts_is_plain_ce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    for scheme in ("inverse", "sqrt_inverse", "effective"):
        loss = CrossEntropyLoss(class_weights=scheme, class_counts=[7, 7, 7, 7])(logits, target)  # type: ignore[arg-type]
        assert torch.allclose(loss, F.cross_entropy(logits, target)), scheme


def test_explicit_class_weights_are_used_as_given(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    weights = [1.0, 2.0, 3.0, 4.0]
    loss = CrossEntropyLoss(class_weights=weights)(logits, target)
    assert torch.allclose(loss, F.cross_entropy(logits, target, weight=torch.tensor(weights)))


def test_class_weight_errors_are_clear(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="class counts"):
        CrossEntropyLoss(class_weights="inverse")
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        CrossEntropyLoss(class_weights="inverse", class_counts=[3, 0, 2])
    with pytest.raises(ValueError, match="3 classes but the logits have 4"):
        CrossEntropyLoss(class_weights="inverse", class_counts=[3, 1, 2])(*batch)


# --- focal ------------------------------------------------------------------------------------------


def test_focal_gamma0_is_cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6)


def test_focal_alpha_matches_hand_reference(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    alpha = torch.tensor([0.25, 0.5, 1.0, 2.0])
    ce = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=alpha.tolist())(logits, target), (alpha[target] * ce).mean())
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=0.5)(logits, target), 0.5 * ce.mean())
    p_t = ce.neg().exp()
    focal = FocalLoss(gamma=2.0, alpha=alpha.tolist())(logits, target)
    assert torch.allclose(focal, (alpha[target] * (1 - p_t) ** 2 * ce).mean(), atol=1e-6)


def test_focal_inverse_alpha_needs_counts(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    with pytest.raises(ValueError, match="class counts"):
        FocalLoss(alpha="inverse")
    counts = [40, 20, 10, 5]
    alpha = class_weights_from_counts(counts, "inverse")
    ce = F.cross_entropy(logits, target, reduction="none")
    loss = FocalLoss(gamma=0.0, alpha="inverse", class_counts=counts)(logits, target)
    assert torch.allclose(loss, (alpha[target] * ce).mean())


def test_focal_down_weights_easy_examples() -> None:
    target = torch.tensor([0, 0])
    easy, hard = math.log(9.0), math.log(1 / 9.0)  # p_t = 0.9 and 0.1 with two classes
    logits = torch.tensor([[easy, 0.0], [hard, 0.0]])
    focal = torch.stack([FocalLoss(gamma=2.0)(logits[i : i + 1], target[:1]) for i in range(2)])
    ce = F.cross_entropy(logits, target, reduction="none")
    ratio = focal / ce
    assert ratio[0].item() == pytest.approx(0.1**2, rel=1e-4)
    assert ratio[1].item() == pytest.approx(0.9**2, rel=1e-4)
    assert (focal <= ce).all()


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_finite_for_confident_predictions(gamma: float) -> None:
    logits = torch.tensor([[200.0, -200.0, 0.0], [-50.0, 50.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma=gamma)(logits, torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# --- logit adjustment -------------------------------------------------------------------------------


def test_logit_adjusted_loss_with_uniform_prior_is_ce(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    loss = LogitAdjustedLoss(tau=1.0, class_counts=[5, 5, 5, 5])(logits, target)
    assert torch.allclose(loss, F.cross_entropy(logits, target))
    skewed = LogitAdjustedLoss(tau=1.0, class_counts=[100, 10, 5, 1])
    prior = torch.tensor([100, 10, 5, 1.0]) / 116
    assert torch.allclose(skewed(logits, target), F.cross_entropy(logits + prior.log(), target))
    with pytest.raises(ValueError, match="class counts"):
        LogitAdjustedLoss()


def test_post_hoc_logit_adjust() -> None:
    logits = torch.tensor([[5.0, 3.0, -2.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(logit_adjust(logits, [3, 3, 3]), logits)  # uniform prior: identity
    adjusted = logit_adjust(logits, [90, 9, 1], tau=1.0)
    assert logits.argmax(-1).tolist() == [0, 0]
    assert adjusted.argmax(-1).tolist() == [1, 2]  # predictions move toward the rare classes
    assert torch.allclose(adjusted - logits, -(3 * torch.tensor([0.9, 0.09, 0.01])).log())


# --- registry ---------------------------------------------------------------------------------------


def test_losses_registry_names_and_fragments() -> None:
    """One name per loss: registry name = ``configs/loss/<name>.yaml`` stem, whose class_path is that class."""
    assert LOSSES.names() == ["ce", "coral", "corn", "focal", "logit_adjusted"]
    assert LOSSES.get("focal") is FocalLoss and FocalLoss.registry_name == "focal"
    for name in LOSSES.names():
        loss_cls = LOSSES.get(name)
        assert loss_cls.registry_name == name
        fragment = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        class_path = fragment["model"]["init_args"]["loss"]["class_path"]
        module, _, attr = class_path.rpartition(".")
        assert getattr(importlib.import_module(module), attr) is loss_cls, name


def test_losses_registry_builds_from_counts(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, target = batch
    for name in LOSSES.names():
        loss_cls = LOSSES.get(name)
        # class_counts comes first: jsonargparse hides it from configs and the models pass it positionally.
        assert next(iter(inspect.signature(loss_cls).parameters)) == "class_counts"
        built = (loss_cls(class_counts=[4, 3, 2, 1]), loss_cls([4, 3, 2, 1]), build_loss(name, [4, 3, 2, 1]))
        for loss in built:
            assert type(loss) is loss_cls
            value = loss(logits, target)
            assert value.ndim == 0 and torch.isfinite(value)


def test_build_loss_passes_hparams_and_lists_choices(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    focal = build_loss("focal", gamma=0.0)
    assert isinstance(focal, FocalLoss) and focal.gamma == 0.0
    assert torch.allclose(focal(*batch), F.cross_entropy(*batch), atol=1e-6)
    weighted = build_loss("ce", class_counts=[40, 20, 10, 5], class_weights="inverse")
    assert torch.allclose(weighted.weight, class_weights_from_counts([40, 20, 10, 5], "inverse"))
    with pytest.raises(KeyError, match="Unknown loss 'dice'; choose one of: ce, coral, corn, focal, logit_adjusted"):
        build_loss("dice")


LOSS_FRAGMENTS = [
    p for p in sorted(CONFIG_DIR.glob("*.yaml")) if "loss" in yaml.safe_load(p.read_text())["model"]["init_args"]
]


@pytest.mark.parametrize("path", LOSS_FRAGMENTS, ids=lambda p: p.stem)
def test_loss_config_fragment_builds(path: Path, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    from jsonargparse import ArgumentParser

    def model(loss: Callable[[Sequence[int] | None], nn.Module]) -> None:
        """Stand-in for the medfusion models, which call ``loss(class_counts)``."""

    spec = yaml.safe_load(path.read_text())["model"]["init_args"]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(model, "model")
    loss = parser.instantiate(parser.parse_object({"model": spec})).model.loss([4, 3, 2, 1])
    for key, value in spec["loss"]["init_args"].items():  # every configured value reached the loss
        if key == "class_weights" and value != "none":
            assert loss.weight is not None
        elif key not in ("class_weights", "alpha"):
            assert getattr(loss, key) == value, key
    assert torch.isfinite(loss(*batch))


# --- contrastive ------------------------------------------------------------------------------------


def _supcon_reference(emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(emb, dim=-1)
    terms = []
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[j] / temperature for j in others]), 0)
        positives = [j for j in others if labels[j] == labels[i]]
        if positives:
            terms.append(-torch.stack([z[i] @ z[p] / temperature - denom for p in positives]).mean())
    return torch.stack(terms).mean()


def test_supcon_matches_reference_and_masks_lonely_anchors() -> None:
    torch.manual_seed(0)
    emb = torch.randn(9, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])  # class 3 has no positive
    loss = supcon_loss(emb, labels, temperature=0.1)
    assert torch.allclose(loss, _supcon_reference(emb, labels, 0.1), atol=1e-5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_supcon_without_any_positive_is_zero_with_graph() -> None:
    emb = torch.randn(4, 8, requires_grad=True)
    loss = supcon_loss(emb, torch.arange(4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_supcon_prefers_clustered_embeddings() -> None:
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    centres = torch.randn(4, 16)
    emb = centres[labels] + 0.1 * torch.randn(32, 16)
    clustered = supcon_loss(emb, labels)
    shuffled = supcon_loss(emb, labels[torch.randperm(32)])
    assert clustered < shuffled


def test_clip_loss_prefers_matched_pairs_and_clamps_scale() -> None:
    torch.manual_seed(0)
    image = torch.randn(16, 32)
    text = image + 0.1 * torch.randn(16, 32)
    scale = torch.tensor(math.log(1 / 0.07))
    matched = clip_loss(image, text, scale)
    shuffled = clip_loss(image, text[torch.randperm(16)], scale)
    assert matched < shuffled
    assert torch.allclose(clip_loss(image, text, scale), clip_loss(text, image, scale))  # symmetric
    big = torch.tensor(math.log(1000.0), requires_grad=True)
    clamped = clip_loss(image, text, big)
    assert torch.allclose(clamped, clip_loss(image, text, torch.tensor(math.log(100.0))))
    clamped.backward()
    assert big.grad.item() == 0.0  # no push beyond the clamp


# --- modality disagreement --------------------------------------------------------------------------


def test_symmetric_kl_properties() -> None:
    torch.manual_seed(0)
    p, q = torch.randn(8, 5), torch.randn(8, 5)
    assert torch.allclose(symmetric_kl(p, p), torch.zeros(8), atol=1e-7)
    assert torch.allclose(symmetric_kl(p, p + 3.0), torch.zeros(8), atol=1e-6)  # shift-invariant
    assert torch.allclose(symmetric_kl(p, q), symmetric_kl(q, p))
    assert (symmetric_kl(p, q) > 0).all()
    log_p, log_q = p.log_softmax(-1), q.log_softmax(-1)
    kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(symmetric_kl(p, q), 0.5 * (kl_pq + kl_qp), atol=1e-6)


def test_disagreement_weight_bounds_growth_and_warmup() -> None:
    kl = torch.tensor([0.0, 0.2, 0.5, 2.0, 50.0], requires_grad=True)
    full = disagreement_weight(kl, step=1000, warmup_steps=100, clip=1.0)
    assert not full.requires_grad
    assert ((full >= 1.0) & (full <= 2.0)).all()
    assert (full.diff() >= 0).all() and full[2] > full[1] > full[0]
    assert torch.allclose(full, torch.tensor([1.0, 1.2, 1.5, 2.0, 2.0]))
    assert torch.allclose(disagreement_weight(kl, step=0, warmup_steps=100, clip=1.0), torch.ones(5))
    half = disagreement_weight(kl, step=50, warmup_steps=100, clip=1.0)
    assert torch.allclose(half - 1, 0.5 * (full - 1))
    assert torch.allclose(disagreement_weight(kl, step=0, warmup_steps=0, clip=1.0), full)
    with pytest.raises(ValueError, match="clip"):
        disagreement_weight(kl, step=0, clip=0.0)
