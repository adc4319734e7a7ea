"""The uncertainty-gated dual expert: the gate follows the experts' entropies, the mixture trains both experts, and
the model logs and explains the gate."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from test_models import SMALL_IMAGE, SMALL_TEXT, VOCAB, fit_and_score, toy_samples

from medfusion.data import Collate
from medfusion.data.errors import ConfigError
from medfusion.heads import MLPHead
from medfusion.heads.dual_expert import DualExpertHead, entropy_gate, predictive_entropy
from medfusion.interpret import explain_batch, explanation_figure
from medfusion.models import MultimodalClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_gate_lies_in_0_1_and_moves_toward_the_lower_entropy_expert() -> None:
    certain = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.0, 0.0, 0.0], [0.0, 8.0, 0.0], [3.0, 0.0, 0.0]])
    gate = entropy_gate([certain, unsure])
    assert gate.shape == (3, 2) and bool(((gate >= 0) & (gate <= 1)).all())
    assert torch.allclose(gate.sum(-1), torch.ones(3))
    assert gate[0, 0] > 0.5 > gate[1, 0]  # the confident expert weighs more, whichever it is
    assert gate[2, 0] == pytest.approx(0.5)  # equal entropies, equal weights
    # the uniform expert's entropy is log C: the weight ratio is exp(H_unsure - H_certain) at temperature 1
    h = predictive_entropy(certain[:1])
    assert float(gate[0, 0] / gate[0, 1]) == pytest.approx(math.exp(math.log(3) - float(h)), rel=1e-5)
    sharper = entropy_gate([certain, unsure], temperature=0.1)
    assert sharper[0, 0] > gate[0, 0]


def test_the_head_mixes_the_experts_probabilities_and_trains_both() -> None:
    torch.manual_seed(0)
    head = DualExpertHead((6, 4), 3, MLPHead, names=("fused", "local"))
    x = torch.randn(5, 10, requires_grad=True)
    log_probs = head(x)
    first, second = (logits.softmax(-1) for logits in head.expert_logits)
    gate = head.routing()["combine"]
    assert not head._gate.requires_grad  # the gate reads detached entropies: no gradient makes an expert surer
    assert torch.allclose(log_probs.exp(), gate[:, :1] * first + gate[:, 1:] * second, atol=1e-6)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(5), atol=1e-6)
    log_probs[:, 0].sum().backward()
    for expert in head.experts:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in expert.parameters())
    assert x.grad[:, :6].abs().sum() > 0 and x.grad[:, 6:].abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        DualExpertHead((6, 4), 3, MLPHead, temperature=0.0)


def _model(**kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=4,
        image_encoder=SMALL_IMAGE,
        text_encoder=SMALL_TEXT,
        vocab_size=VOCAB,
        lr=1e-3,
        scheduler="constant",
        **kwargs,
    )


def test_a_dual_expert_model_learns_and_logs_and_explains_its_gate() -> None:
    """Fused features and the image alone as the two experts, on a label that needs both modalities: the mixture
    learns it; the experts' losses and the mean gate are logged; explain shows each sample's gate."""
    L.seed_everything(0, verbose=False)
    model = _model(dual_expert="image")
    assert isinstance(model.head, DualExpertHead) and model.head.names == ("fused", "image")
    samples = toy_samples()
    accuracy = fit_and_score(model, samples, lambda image_bit, text_bit: 2 * image_bit + text_bit, epochs=8)
    assert accuracy > 0.9
    logged = model.trainer.logged_metrics
    assert {"train/loss_expert_fused", "train/loss_expert_image"} <= set(logged)
    gates = float(logged["train/dual_expert_gate_fused"]) + float(logged["train/dual_expert_gate_image"])
    assert gates == pytest.approx(1.0, abs=1e-5)
    batch = Collate(0)([{**s, "label": 0} for s in samples[:4]])
    explanations = explain_batch(model, batch)
    for e in explanations:
        assert set(e.experts) == {"fused", "image"} and sum(e.experts.values()) == pytest.approx(1.0, abs=1e-5)
        assert e.routing is None
    # the image expert alone can tell at most two of the four classes apart: the fused expert is the surer one
    assert sum(e.experts["fused"] for e in explanations) / len(explanations) > 0.5
    figure = explanation_figure(explanations[0], ["a", "b", "c", "d"])
    assert "dual-expert gate" in [ax.get_title() for ax in figure.axes]


def test_an_unknown_dual_expert_modality_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.dual_expert names 'local'"):
        _model(dual_expert="local")


def test_image_modalities_can_share_one_encoder() -> None:
    specs = {"image": {"kind": "image"}, "local": {"kind": "image"}, "text": {"kind": "text", "vocab_size": VOCAB}}
    shared = MultimodalClassifier(num_classes=2, modalities=specs, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT,
                                  share_image_encoder=True)  # fmt: skip
    separate = MultimodalClassifier(num_classes=2, modalities=specs, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT)
    assert shared.encoders["image"] is shared.encoders["local"]
    assert separate.encoders["image"] is not separate.encoders["local"]
    image_params = sum(p.numel() for p in shared.encoders["image"].parameters())
    total = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert total == image_params  # the shared model has one image encoder's weights fewer
