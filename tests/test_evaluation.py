"""Behaviour of medfusion.evaluation: weighted/bootstrap metrics, calibration, reports and embedding maps."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score, MulticlassRecall

from medfusion.evaluation import (
    bootstrap_ci,
    classification_report,
    confusion_matrix,
    embedding_map,
    expected_calibration_error,
    fit_temperature,
    point_metrics,
    project_2d,
    weighted_metrics,
    write_classification_report,
    write_confusion_matrix,
)

METRICS = ("acc", "balanced_acc", "macro_f1", "macro_auroc")


def torchmetrics_values(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    num_classes = probs.shape[1]
    return {
        "acc": float(MulticlassAccuracy(num_classes, average="micro")(probs, labels)),
        "balanced_acc": float(MulticlassRecall(num_classes, average="macro")(probs, labels)),
        "macro_f1": float(MulticlassF1Score(num_classes, average="macro")(probs, labels)),
        "macro_auroc": float(MulticlassAUROC(num_classes, average="macro")(probs, labels)),
    }


def tied_predictions(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows drawn from eight probability vectors (many exact ties per class column) and random labels."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, 3, (8, num_classes), generator=generator).float().softmax(1)
    probs = pool[torch.randint(0, 8, (n,), generator=generator)]
    return probs, torch.randint(0, num_classes, (n,), generator=generator)


def toy_classifier(n: int, seed: int, accuracy: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Three-class predictions that are right with probability ``accuracy``, with informative scores."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    correct = torch.rand(n, generator=generator) < accuracy
    shift = torch.randint(1, 3, (n,), generator=generator)
    preds = torch.where(correct, labels, (labels + shift) % 3)
    scores = torch.rand(n, 3, generator=generator) + F.one_hot(preds, 3)  # argmax == preds
    return scores / scores.sum(1, keepdim=True), labels


def assert_metrics_close(actual: dict[str, float], expected: dict[str, float], atol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], abs=atol), name


def row(metrics: dict[str, torch.Tensor], index: int) -> dict[str, float]:
    return {name: float(value[index]) for name, value in metrics.items()}


# --- weighted metrics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_unit_weights_match_torchmetrics_with_tied_scores(seed: int) -> None:
    probs, labels = tied_predictions(300, 5, seed)
    assert probs[:, 0].unique().numel() <= 8  # heavily tied scores
    metrics = weighted_metrics(probs, labels, torch.ones(1, 300))
    assert set(metrics) == set(METRICS)
    assert all(value.shape == (1,) for value in metrics.values())
    assert_metrics_close(row(metrics, 0), torchmetrics_values(probs, labels))
    assert_metrics_close(point_metrics(probs, labels), torchmetrics_values(probs, labels))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_absent_class_is_excluded_from_macro_averages() -> None:
    probs, labels = tied_predictions(200, 4, seed=2)
    labels = labels % 3  # class 3 never occurs ...
    probs = torch.cat([probs[:, :3], torch.zeros(200, 1)], 1)  # ... and is never predicted
    ours = point_metrics(probs, labels)
    reference = torchmetrics_values(probs, labels)
    for name in ("acc", "balanced_acc", "macro_f1"):
        assert ours[name] == pytest.approx(reference[name], abs=1e-6)
    # torchmetrics scores the AUROC of a class without positives as 0 and keeps it; we skip undefined classes.
    per_class = MulticlassAUROC(4, average="none")(probs, labels)
    assert ours["macro_auroc"] == pytest.approx(float(per_class[:3].mean()), abs=1e-6)
    assert ours["macro_auroc"] > reference["macro_auroc"]


def test_uniform_weights_do_not_change_metrics() -> None:
    probs, labels = tied_predictions(150, 4, seed=3)
    metrics = weighted_metrics(probs, labels, torch.stack([torch.ones(150), torch.full((150,), 2.0)]))
    assert_metrics_close(row(metrics, 1), row(metrics, 0), atol=1e-12)


def test_integer_weights_equal_duplicated_samples() -> None:
    probs, labels = tied_predictions(120, 4, seed=4)
    generator = torch.Generator().manual_seed(5)
    counts = torch.stack([torch.randint(0, 4, (120,), generator=generator) for _ in range(3)])
    metrics = weighted_metrics(probs, labels, counts.float())
    for r in range(3):
        duplicated = torch.repeat_interleave(torch.arange(120), counts[r])
        expected = torchmetrics_values(probs[duplicated], labels[duplicated])
        assert_metrics_close(row(metrics, r), expected)
        assert_metrics_close(row(metrics, r), point_metrics(probs[duplicated], labels[duplicated]), atol=1e-12)


def test_auroc_is_nan_without_any_defined_class() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    assert math.isnan(point_metrics(probs, torch.tensor([0, 0]))["macro_auroc"])
    assert point_metrics(probs, torch.tensor([0, 1]))["macro_auroc"] == 1.0


def test_weighted_metrics_validates_shapes() -> None:
    probs, labels = tied_predictions(10, 3, seed=0)
    with pytest.raises(ValueError, match="weights"):
        weighted_metrics(probs, labels, torch.ones(9))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_metrics(probs, labels, -torch.ones(1, 10))
    with pytest.raises(ValueError, match="labels"):
        weighted_metrics(probs, labels[:5], torch.ones(1, 10))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        weighted_metrics(probs, labels + 3, torch.ones(1, 10))


# --- bootstrap ----------------------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_point_estimate() -> None:
    probs, labels = toy_classifier(400, seed=0)
    point = point_metrics(probs, labels)
    assert 0.72 < point["acc"] < 0.88
    intervals = bootstrap_ci(probs, labels, num_resamples=500)
    assert set(intervals) == set(METRICS)
    for name, (low, high) in intervals.items():
        assert low < point[name] < high, name
        assert high - low < 0.2, name


def test_bootstrap_interval_shrinks_with_more_data() -> None:
    small = bootstrap_ci(*toy_classifier(100, seed=1), num_resamples=300)
    large = bootstrap_ci(*toy_classifier(2000, seed=1), num_resamples=300)
    for name in METRICS:
        assert large[name][1] - large[name][0] < 0.5 * (small[name][1] - small[name][0]), name


def test_bootstrap_is_deterministic_and_intervals_nest() -> None:
    probs, labels = toy_classifier(300, seed=2)
    first = bootstrap_ci(probs, labels, num_resamples=200, seed=7)
    assert bootstrap_ci(probs, labels, num_resamples=200, seed=7) == first
    assert bootstrap_ci(probs, labels, num_resamples=200, seed=8) != first
    narrow = bootstrap_ci(probs, labels, num_resamples=200, confidence=0.8, seed=7)
    for name in METRICS:
        assert first[name][0] <= narrow[name][0] < narrow[name][1] <= first[name][1], name
        assert first[name][1] - first[name][0] > narrow[name][1] - narrow[name][0], name


def test_bootstrap_chunking_does_not_change_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    from medfusion.evaluation import bootstrap

    probs, labels = toy_classifier(50, seed=3)
    one_chunk = bootstrap_ci(probs, labels, num_resamples=40)
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 50 * 7)  # 7 resamples per chunk, the last one partial
    assert bootstrap_ci(probs, labels, num_resamples=40) == one_chunk


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"confidence": 1.0}, "confidence"), ({"confidence": 0.0}, "confidence"), ({"num_resamples": 0}, "num_resamples")],
)
def test_bootstrap_validates_arguments(kwargs: dict[str, float], message: str) -> None:
    probs, labels = toy_classifier(20, seed=0)
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(probs, labels, **kwargs)


def test_bootstrap_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        bootstrap_ci(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


# --- calibration --------------------------------------------------------------------------------------------------


def test_ece_is_zero_when_calibrated() -> None:
    confident = F.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    assert expected_calibration_error(confident, torch.tensor([0, 1, 2, 1])) < 1e-6
    three_quarters = torch.tensor([[0.75, 0.25]] * 8)
    labels = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1])  # 75% correct at confidence 0.75
    assert expected_calibration_error(three_quarters, labels) < 1e-6


def test_ece_measures_overconfidence() -> None:
    probs = torch.tensor([[0.95, 0.05]] * 10)
    labels = torch.tensor([0] * 6 + [1] * 4)  # 60% correct at confidence 0.95
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35, abs=1e-5)


def true_model(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated five-class logits and labels sampled from their softmax."""
    generator = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, 5, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_fit_temperature_undoes_overconfidence() -> None:
    logits, labels = true_model(5000, seed=0)
    overconfident = 4.0 * logits.float()
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    assert F.cross_entropy(overconfident / temperature, labels) < F.cross_entropy(overconfident, labels)
    probs = overconfident.softmax(1)
    assert expected_calibration_error((overconfident / temperature).softmax(1), labels) < expected_calibration_error(
        probs, labels
    )
    assert fit_temperature(overconfident, labels) == temperature  # deterministic


def test_fit_temperature_keeps_calibrated_logits() -> None:
    logits, labels = true_model(5000, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.15)


def test_fit_temperature_works_inside_inference_mode() -> None:
    """Lightning's test and predict hooks run under inference mode, where the fit must still get gradients."""
    logits, labels = true_model(2000, seed=2)
    expected = fit_temperature(4 * logits, labels)
    with torch.inference_mode():
        assert fit_temperature(4 * logits, labels) == expected


# --- reports ------------------------------------------------------------------------------------------------------

PREDS = torch.tensor([0, 0, 1, 1, 1, 2, 0, 2])
LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
NAMES = ("nv", "mel", "bkl")


def test_confusion_matrix_counts() -> None:
    expected = torch.tensor([[2, 1, 0], [0, 2, 1], [1, 0, 1]])
    cm = confusion_matrix(PREDS, LABELS, 3)
    assert cm.dtype == torch.long
    assert torch.equal(cm, expected)
    assert torch.equal(confusion_matrix(PREDS, LABELS, 4)[:3, :3], expected)
    with pytest.raises(ValueError, match="preds"):
        confusion_matrix(PREDS + 1, LABELS, 3)


def test_classification_report_values() -> None:
    rows = classification_report(confusion_matrix(PREDS, LABELS, 3), NAMES)
    assert [r["class"] for r in rows] == [*NAMES, "macro avg", "weighted avg"]
    expected = {  # precision, recall, f1, support
        "nv": (2 / 3, 2 / 3, 2 / 3, 3),
        "mel": (2 / 3, 2 / 3, 2 / 3, 3),
        "bkl": (1 / 2, 1 / 2, 1 / 2, 2),
        "macro avg": (11 / 18, 11 / 18, 11 / 18, 8),
        "weighted avg": (5 / 8, 5 / 8, 5 / 8, 8),
    }
    for r in rows:
        precision, recall, f1, support = expected[str(r["class"])]
        assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((precision, recall, f1))
        assert r["support"] == support


def test_classification_report_zero_division() -> None:
    cm = torch.tensor([[3, 0, 0], [1, 0, 0], [0, 0, 0]])  # class 1 never predicted, class 2 absent
    rows = {r["class"]: r for r in classification_report(cm, NAMES)}
    assert rows["nv"]["precision"] == pytest.approx(0.75)
    assert rows["mel"]["precision"] == rows["mel"]["recall"] == rows["mel"]["f1"] == 0.0
    assert rows["bkl"]["support"] == 0 and rows["bkl"]["recall"] is None  # absent: not a fake 0
    assert rows["macro avg"]["recall"] == pytest.approx(1 / 2)  # over nv and mel, as torchmetrics averages
    assert rows["weighted avg"]["recall"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="square"):
        classification_report(cm, NAMES[:2])


def test_report_files_round_trip(tmp_path: Path) -> None:
    cm = confusion_matrix(PREDS, LABELS, 3)
    csv_path, png_path = tmp_path / "a" / "cm.csv", tmp_path / "b" / "cm.png"
    write_confusion_matrix(cm, NAMES, csv_path, png_path, title="test")
    with csv_path.open(newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["true\\predicted", *NAMES]
    assert [r[0] for r in table[1:]] == list(NAMES)
    assert torch.equal(torch.tensor([[int(v) for v in r[1:]] for r in table[1:]]), cm)
    with Image.open(png_path) as image:
        assert image.format == "PNG"
        assert 300 <= image.width <= 2000 and 300 <= image.height <= 2000

    report_path = tmp_path / "c" / "report.csv"
    rows = classification_report(cm, NAMES)
    write_classification_report(rows, report_path)
    with report_path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == ["class", "precision", "recall", "f1", "support"]
    assert [r["class"] for r in records] == [r["class"] for r in rows]
    assert records[0]["precision"] == "0.6667"
    assert records[-2]["f1"] == "0.6111"
    assert records[-1]["support"] == "8"


def test_confusion_matrix_csv_without_png(tmp_path: Path) -> None:
    write_confusion_matrix(torch.eye(10, dtype=torch.long), [f"c{i}" for i in range(10)], tmp_path / "cm.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["cm.csv"]


# --- embeddings ---------------------------------------------------------------------------------------------------


def two_clusters(n: int, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    centers = torch.zeros(2, dim)
    centers[1, :4] = 8.0
    return centers[labels] + torch.randn(n, dim, generator=generator), labels


def nearest_centroid_accuracy(coords: np.ndarray, labels: np.ndarray) -> float:
    centroids = np.stack([coords[labels == c].mean(0) for c in (0, 1)])
    assigned = np.linalg.norm(coords[:, None] - centroids[None], axis=2).argmin(1)
    return float((assigned == labels).mean())


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_project_2d_separates_clusters(method: str) -> None:
    embeddings, labels = two_clusters(60)
    coords = project_2d(embeddings, method, seed=0)
    assert coords.shape == (60, 2)
    assert np.isfinite(coords).all()
    assert nearest_centroid_accuracy(coords, labels.numpy()) == 1.0


def test_project_2d_small_inputs_fall_back_to_pca() -> None:
    coords = project_2d(torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 2.0], [3.0, 1.0, 2.0]]), "tsne")
    assert coords.shape == (3, 2)
    assert np.allclose(np.abs(coords[:, 0]), np.abs([-4 / 3, -1 / 3, 5 / 3]))
    assert np.allclose(coords[:, 1], 0.0)
    assert project_2d(torch.ones(1, 5), "tsne").shape == (1, 2)
    with pytest.raises(ValueError, match="method"):
        project_2d(torch.ones(5, 5), "umap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        project_2d(torch.full((5, 5), float("nan")), "pca")


def test_embedding_map_writes_png(tmp_path: Path) -> None:
    embeddings, labels = two_clusters(60)
    path = embedding_map(embeddings, labels, ["benign", "malignant", "unused"], tmp_path / "maps" / "e.png", "pca")
    assert path == tmp_path / "maps" / "e.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 300
    with pytest.raises(ValueError, match="class name"):
        embedding_map(embeddings, labels + 2, ["a", "b"], tmp_path / "x.png")
