"""Graded classes: the CORAL and CORN heads (probabilities, monotone cumulative probabilities, rank consistency,
gradients, learning), their losses against the papers' formulas, quadratic weighted kappa and grade MAE against
sklearn and by hand (with bootstrap intervals), the risk scores of predictions.csv and the class-order warning."""

from __future__ import annotations

import csv
import json
import re
import warnings
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from data_helpers import build, write_layout
from sklearn.metrics import cohen_kappa_score
from test_cli import CONFIGS, small_run_args

from medfusion.callbacks.outputs import write_predictions
from medfusion.cli import main
from medfusion.compare import leaderboard
from medfusion.evaluation import bootstrap_ci, point_metrics
from medfusion.heads import CORALHead, CORNHead, MLPHead, build_head, exceedance, is_ordinal
from medfusion.heads.dual_expert import DualExpertHead
from medfusion.losses import CoralLoss, CornLoss, build_loss
from medfusion.metrics import classification_metrics
from medfusion.models import MultimodalClassifier, TabularClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = [CORALHead, CORNHead]


@pytest.mark.parametrize("head_class", HEADS)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_ordinal_heads_give_probabilities_and_monotone_cumulative_probabilities(head_class, scale: float) -> None:
    torch.manual_seed(0)
    head = head_class(8, 5, hidden_dims=()).eval()
    log_probs = head(scale * torch.randn(64, 8))
    probs = log_probs.exp()
    assert log_probs.shape == (64, 5) and torch.isfinite(log_probs).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(64))
    cumulative = exceedance(probs)
    assert (cumulative[:, 1:] <= cumulative[:, :-1] + 1e-6).all()  # P(y > k) never rises with k
    torch.testing.assert_close(log_probs.softmax(-1), probs)  # the pipeline's softmax leaves them as they are


def test_coral_is_rank_consistent_however_it_is_trained() -> None:
    """Training pushes the thresholds towards the wrong order (the grades' targets reversed); they stay ordered."""
    torch.manual_seed(0)
    head = CORALHead(4, 4, hidden_dims=())
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    x = torch.randn(32, 4)
    for _ in range(50):
        z = head.cumulative_logits(x)
        wrong = torch.tensor([0.0, 1.0, 1.0]).expand_as(z)  # "y > 0" false, "y > 2" true: unordered tasks
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(z, wrong).backward()
        optimizer.step()
    thresholds = head.thresholds()
    assert (thresholds[1:] < thresholds[:-1]).all()
    cumulative = torch.sigmoid(head.cumulative_logits(x))
    assert (cumulative[:, 1:] <= cumulative[:, :-1]).all()


@pytest.mark.parametrize("head_class", HEADS)
def test_every_ordinal_head_parameter_gets_a_gradient(head_class) -> None:
    torch.manual_seed(0)
    head = head_class(8, 4)
    loss = (CoralLoss() if head_class is CORALHead else CornLoss())(
        head(torch.randn(6, 8)), torch.tensor([0, 1, 2, 3, 1, 2])
    )
    loss.backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_coral_loss_is_the_papers_cumulative_binary_cross_entropy() -> None:
    torch.manual_seed(0)
    head = CORALHead(6, 5).eval()
    x, y = torch.randn(20, 6), torch.randint(0, 5, (20,))
    z = head.cumulative_logits(x)
    tasks = (y[:, None] > torch.arange(4)).float()
    expected = F.binary_cross_entropy_with_logits(z, tasks, reduction="none").sum(1)
    torch.testing.assert_close(CoralLoss()(head(x), y, reduction="none"), expected)
    weights = [1.0, 2.0, 0.5, 1.0]
    weighted = CoralLoss(task_weights=weights)(head(x), y)
    reference = (F.binary_cross_entropy_with_logits(z, tasks, reduction="none") * torch.tensor(weights)).sum(1).mean()
    torch.testing.assert_close(weighted, reference)


def test_corn_loss_is_the_papers_conditional_binary_cross_entropy() -> None:
    torch.manual_seed(0)
    head = CORNHead(6, 5).eval()
    x, y = torch.randn(20, 6), torch.randint(0, 5, (20,))
    f = head.conditional_logits(x)
    total, pairs = 0.0, 0
    for k in range(4):  # task k on the samples past grade k-1 only
        used = y >= k
        total = total + F.binary_cross_entropy_with_logits(f[used, k], (y[used] > k).float(), reduction="sum")
        pairs += int(used.sum())
    torch.testing.assert_close(CornLoss()(head(x), y), total / pairs)
    # by the chain rule, a sample's terms add up to its negative log-likelihood
    per_sample = CornLoss()(head(x), y, reduction="none") * pairs / len(y)
    torch.testing.assert_close(per_sample, -head(x).gather(1, y[:, None]).squeeze(1))


def test_ordinal_losses_take_any_heads_logits_and_are_registered() -> None:
    logits, y = torch.tensor([[2.0, 0.0, -2.0]]), torch.tensor([0])
    probs = logits.softmax(-1)[0]
    expected = -(torch.log(1 - probs[1:].sum()) + torch.log(1 - probs[2]))  # y = 0: both tasks "not above"
    torch.testing.assert_close(build_loss("coral")(logits, y), expected)
    assert isinstance(build_loss("corn"), CornLoss)
    assert isinstance(build_head("coral", in_dim=4, num_classes=3), CORALHead)
    with pytest.raises(ValueError, match="two grades"):
        CORNHead(4, 1)


def test_ordinal_heads_learn_a_grade_from_a_latent_severity() -> None:
    """Grades are bins of a hidden score read through a random projection: the heads must learn the order."""
    torch.manual_seed(0)
    severity = torch.rand(600) * 5
    y = severity.floor().long().clamp(max=4)
    x = severity[:, None] * torch.randn(1, 8) + 0.1 * torch.randn(600, 8)
    for head_class, loss in ((CORALHead, CoralLoss()), (CORNHead, CornLoss())):
        head = head_class(8, 5, hidden_dims=(32,), dropout=0.0)
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(300):
            optimizer.zero_grad()
            loss(head(x[:400]), y[:400]).backward()
            optimizer.step()
        predicted = head.eval()(x[400:]).argmax(1)
        kappa = cohen_kappa_score(y[400:], predicted, weights="quadratic")
        assert kappa > 0.9, (head_class.__name__, kappa)


def test_graded_models_are_known_by_their_head_loss_or_option() -> None:
    specs = {"tabular": {"kind": "tabular", "num_numeric": 2, "cardinalities": []}}

    def model(**kwargs):
        return TabularClassifier(num_classes=3, modalities=specs, **kwargs)

    assert model(head=CORALHead).graded and model(loss=CornLoss).graded
    assert not model().graded and model(graded=True).graded and not model(head=CORNHead, graded=False).graded
    assert "qwk" in model(head=CORALHead).val_metrics and "qwk" not in model().val_metrics
    dual = DualExpertHead((4, 4), 3, CORALHead, ("fused", "image"))
    assert is_ordinal(dual) and not is_ordinal(MLPHead(4, 3))


# ----------------------------------------------------------------------------------------------- metrics
LABELS = torch.tensor([0, 1, 2, 3, 4, 2, 1, 0, 3, 4, 2, 2])
PREDICTED = torch.tensor([0, 2, 2, 1, 4, 3, 1, 1, 3, 2, 2, 0])


def probs_of(predicted: torch.Tensor, num_classes: int = 5) -> torch.Tensor:
    return F.one_hot(predicted, num_classes).float() * 0.6 + 0.4 / num_classes


def hand_kappa(labels: list[int], predicted: list[int], k: int) -> float:
    observed = np.zeros((k, k))
    for a, b in zip(labels, predicted, strict=True):
        observed[a, b] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)])
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_kappa_and_grade_error_equal_sklearn_and_a_hand_computation() -> None:
    probs = probs_of(PREDICTED)
    expected_kappa = cohen_kappa_score(LABELS, PREDICTED, weights="quadratic")
    assert expected_kappa == pytest.approx(hand_kappa(LABELS.tolist(), PREDICTED.tolist(), 5))
    expected_mae = (LABELS - PREDICTED).abs().float().mean().item()
    assert expected_mae == pytest.approx(9 / 12)  # |errors| 0 1 0 2 0 1 0 1 0 2 0 2
    logged = classification_metrics(5, "test/", graded=True)
    logged.update(probs, LABELS)
    values = {k: float(v) for k, v in logged.compute().items()}
    assert values["test/qwk"] == pytest.approx(expected_kappa, abs=1e-6)
    assert values["test/grade_mae"] == pytest.approx(expected_mae, abs=1e-6)
    point = point_metrics(probs, LABELS, graded=True)
    assert point["qwk"] == pytest.approx(expected_kappa) and point["grade_mae"] == pytest.approx(expected_mae)
    assert "qwk" not in point_metrics(probs, LABELS)


def test_kappa_bootstrap_intervals_contain_the_point_estimate() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (200,))
    predicted = (labels + torch.randint(-1, 2, (200,))).clamp(0, 4)
    probs = probs_of(predicted)
    point = point_metrics(probs, labels, graded=True)
    intervals = bootstrap_ci(probs, labels, num_resamples=300, graded=True)
    for name in ("qwk", "grade_mae"):
        low, high = intervals[name]
        assert low < point[name] < high, (name, low, point[name], high)
    assert intervals["qwk"][1] - intervals["qwk"][0] < 0.2  # 200 samples: a narrow interval, not [-1, 1]


def test_predictions_of_a_graded_model_carry_the_risk_of_each_grade(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    rows = [("a", [0.1, 0.2, 0.3, 0.4], None), ("b", [], "unreadable image")]
    write_predictions(path, rows, ["none", "mild", "moderate", "severe"], graded=True)
    written = list(csv.DictReader(path.open()))
    assert [written[0][f"risk_ge_{c}"] for c in ("mild", "moderate", "severe")] == ["0.900000", "0.700000", "0.400000"]
    assert "risk_ge_none" not in written[0] and written[1]["risk_ge_mild"] == "" and written[1]["status"] == "error"
    write_predictions(path, rows[:1], ["a", "b", "c", "d"])
    assert not any(key.startswith("risk") for key in next(csv.DictReader(path.open())))


# ----------------------------------------------------------------------------------------------- runs
def test_an_ordinal_head_on_string_sorted_classes_warns_naming_the_order(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    dm = build(layout)
    dm.setup("fit")
    model = MultimodalClassifier(
        num_classes=dm.num_classes, modalities=dm.modality_specs, class_names=dm.class_names, head=CORALHead
    )
    trainer = type("T", (), {"datamodule": dm})()
    model._trainer = trainer
    with pytest.warns(UserWarning, match=re.escape(f"order {dm.class_names}") + ".*data.class_names"):
        model.setup("validate")
    ordered = build(layout, class_names=list(reversed(dm.class_names)))
    ordered.setup("fit")
    model._trainer = type("T", (), {"datamodule": ordered})()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.setup("validate")


@pytest.mark.slow
def test_the_graded_demo_logs_kappa_with_intervals_and_writes_risk_scores(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "demo_graded.yaml"), *small_run_args(tmp_path), "--trainer.max_epochs=1"]
    main(["fit", *args])
    run = tmp_path / "runs" / "demo_graded" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert -1 <= metrics["test/qwk"] <= 1 and metrics["test/grade_mae"] >= 0
    assert metrics["test/qwk_ci_low"] <= metrics["test/qwk"] <= metrics["test/qwk_ci_high"]
    checkpoint = next((run / "checkpoints").glob("best-*.ckpt"))
    main(["predict", *args, f"--ckpt_path={checkpoint}"])
    rows = list(csv.DictReader(next(tmp_path.rglob("predictions.csv")).open()))
    grades = ["none", "mild", "moderate", "severe", "proliferative"]
    for row in rows:
        probs = [float(row[f"prob_{g}"]) for g in grades]
        risks = [float(row[f"risk_ge_{g}"]) for g in grades[1:]]
        assert risks == pytest.approx([sum(probs[k:]) for k in range(1, 5)], abs=2e-6)
        assert all(a >= b for a, b in pairwise(risks))


def test_the_compare_leaderboard_ranks_by_kappa_or_grade_error() -> None:
    rows = [
        {"fusion": "concat", "head": head, "loss": None, "seed": seed, "params": 1, "trainable_params": 1,
         "fit_s": 1.0, "qwk": qwk + 0.01 * seed, "grade_mae": mae, "macro_f1": 0.5}
        for head, qwk, mae in (("mlp", 0.70, 0.5), ("coral", 0.90, 0.3), ("corn", 0.80, 0.2))
        for seed in range(3)
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    assert leaderboard(table, metric="qwk")["head"].tolist() == ["coral", "corn", "mlp"]
    assert leaderboard(table, metric="grade_mae")["head"].tolist() == ["corn", "coral", "mlp"]  # lowest first
    spread = pd.DataFrame([{**rows[0], "qwk": q, "seed": s} for s, q in enumerate([-0.9, 0.9, -0.9])])
    board = leaderboard(spread, metric="qwk")
    assert board.loc[0, "qwk_ci_low"] == -1.0 and board.loc[0, "qwk_ci_high"] <= 1.0  # kappa's range, not [0, 1]
