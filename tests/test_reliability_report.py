"""Macro averages agree everywhere (logged torchmetrics, classification report, bootstrap) when a class has no
test samples: it is left out if never predicted, scored 0 if predicted; macro AUROC skips it."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medfusion.callbacks.evaluation import Evaluation
from medfusion.evaluation import (
    bootstrap_ci,
    classification_report,
    confusion_matrix,
    point_metrics,
    weighted_metrics,
    write_classification_report,
)
from medfusion.metrics import classification_metrics

NAMES = ["nv", "mel", "bkl", "df"]
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])  # class 3 (df) has no sample
PREDS_ABSENT = torch.tensor([0, 0, 1, 1, 1, 0, 2, 1])  # ... and is never predicted
PREDS_PREDICTED = torch.tensor([0, 0, 1, 1, 1, 3, 2, 1])  # ... and is predicted once

# Hand-computed from the confusion matrices (per-class values of classes 0-2, and 3 where it is predicted):
# absent: precision 2/3, 1/4, 1; recall 1/2, 1/2, 1/2; F1 4/7, 1/3, 2/3; AUROC 5/8, 1/2, 3/4 (scores 0.7 / 0.1).
# predicted: precision 1, 1/4, 1, 0; recall 1/2, 1/2, 1/2, 0; F1 2/3, 1/3, 2/3, 0; AUROC 3/4, 1/2, 3/4.
EXPECTED = {
    "absent": {
        "acc": 1 / 2,
        "macro_precision": 23 / 36,
        "balanced_acc": 1 / 2,
        "macro_recall": 1 / 2,
        "macro_f1": 11 / 21,
        "macro_auroc": 5 / 8,
    },
    "predicted": {
        "acc": 1 / 2,
        "macro_precision": 9 / 16,
        "balanced_acc": 3 / 8,
        "macro_recall": 3 / 8,
        "macro_f1": 5 / 12,
        "macro_auroc": 2 / 3,
    },
}
PREDS = {"absent": PREDS_ABSENT, "predicted": PREDS_PREDICTED}


def scores(preds: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """Probabilities with 0.7 on the predicted class and 0.1 on each other one (two score levels per class)."""
    probs = torch.full((len(preds), num_classes), 0.1)
    probs[torch.arange(len(preds)), preds] = 0.7
    return probs


def logged(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What the model logs: the collection of medfusion.metrics, without the prefix."""
    collection = classification_metrics(probs.shape[1], "test/")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that a class without positives has no TPR
        collection.update(probs, labels)
        return {key.removeprefix("test/"): float(value) for key, value in collection.compute().items()}


def report_macro(preds: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    rows = classification_report(confusion_matrix(preds, labels, len(NAMES)), NAMES)
    return next(r for r in rows if r["class"] == "macro avg")


@pytest.mark.parametrize("case", ["absent", "predicted"])
def test_macro_metrics_agree_and_match_hand_computed(case: str) -> None:
    preds, expected = PREDS[case], EXPECTED[case]
    probs = scores(preds)
    metrics, point, macro = logged(probs, LABELS), point_metrics(probs, LABELS), report_macro(preds, LABELS)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    for name in ("acc", "balanced_acc", "macro_f1", "macro_auroc"):  # the bootstrap's point estimate
        assert point[name] == pytest.approx(expected[name], abs=1e-6), name
    assert macro["precision"] == pytest.approx(expected["macro_precision"], abs=1e-6)
    assert macro["recall"] == pytest.approx(expected["macro_recall"], abs=1e-6)
    assert macro["f1"] == pytest.approx(expected["macro_f1"], abs=1e-6)


def test_report_marks_classes_without_samples(tmp_path: Path) -> None:
    absent = {r["class"]: r for r in classification_report(confusion_matrix(PREDS_ABSENT, LABELS, 4), NAMES)}
    assert absent["df"] == {"class": "df", "precision": None, "recall": None, "f1": None, "support": 0}
    predicted = {r["class"]: r for r in classification_report(confusion_matrix(PREDS_PREDICTED, LABELS, 4), NAMES)}
    assert predicted["df"] == {"class": "df", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert predicted["weighted avg"]["recall"] == pytest.approx(1 / 2)  # support-weighted: df weighs 0

    path = tmp_path / "report.csv"
    write_classification_report(list(absent.values()), path)
    with path.open(newline="") as handle:
        records = {r["class"]: r for r in csv.DictReader(handle)}
    assert records["df"] == {"class": "df", "precision": "n/a", "recall": "n/a", "f1": "n/a", "support": "0"}
    assert records["macro avg"]["f1"] == f"{11 / 21:.4f}"
    table = pd.read_csv(path).set_index("class")
    assert table.loc["df", ["precision", "recall", "f1"]].isna().all()
    assert table.loc["macro avg", "f1"] == pytest.approx(table.loc[NAMES[:3], "f1"].mean(), abs=1e-4)


def test_bootstrap_resamples_follow_the_same_convention() -> None:
    """Every resample (some without any sample of a class) is scored like the logged metrics of that resample."""
    probs, preds = scores(PREDS_PREDICTED), PREDS_PREDICTED
    counts = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [2, 0, 1, 1, 3, 0, 1, 0],  # class 3 drops out of targets and predictions
            [0, 1, 2, 0, 0, 2, 0, 3],  # class 2's only true sample goes: its AUROC is undefined
            [1, 3, 0, 0, 0, 0, 4, 0],
        ]
    )
    resampled = weighted_metrics(probs, LABELS, counts.double())
    for r, row in enumerate(counts):
        drawn = torch.repeat_interleave(torch.arange(len(LABELS)), row)
        reference = logged(probs[drawn], LABELS[drawn])
        macro = report_macro(preds[drawn], LABELS[drawn])
        for name in ("acc", "balanced_acc", "macro_f1", "macro_auroc"):
            assert float(resampled[name][r]) == pytest.approx(reference[name], abs=1e-6), (r, name)
        assert macro["recall"] == pytest.approx(reference["balanced_acc"], abs=1e-6)
        assert macro["f1"] == pytest.approx(reference["macro_f1"], abs=1e-6)

    intervals = bootstrap_ci(probs, LABELS, num_resamples=200)
    point = point_metrics(probs, LABELS)
    for name, (low, high) in intervals.items():
        assert 0.0 <= low <= point[name] <= high <= 1.0, name


def test_macro_auroc_is_nan_without_a_defined_class() -> None:
    metrics = logged(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 0]))
    assert math.isnan(metrics["macro_auroc"])
    assert math.isnan(point_metrics(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 0]))["macro_auroc"])


# --- through the Evaluation callback --------------------------------------------------------------------------------


class Fixed(Dataset):
    def __init__(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        self.probs, self.labels = probs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": f"case{index:02d}", "probs": self.probs[index], "label": self.labels[index]}


class Replay(L.LightningModule):
    """Returns fixed probabilities from test_step and logs the real metric collection, like the models do."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = NAMES
        self.test_prefixes = ["test/"]
        self.test_metrics = classification_metrics(len(NAMES), "test/")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self.test_metrics.update(batch["probs"], batch["label"])
        self.log_dict(self.test_metrics, batch_size=len(batch["id"]))
        features = torch.zeros(len(batch["id"]), 2)
        return {"id": batch["id"], "label": batch["label"], "probs": batch["probs"], "features": features}


def replay_trainer(root: Path, evaluation: Evaluation) -> L.Trainer:
    """A bare CPU trainer writing into ``root`` with ``evaluation`` as its only callback."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[evaluation],
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evaluation_callback_report_matches_logged_metrics(tmp_path: Path) -> None:
    trainer = replay_trainer(tmp_path, Evaluation(bootstrap_resamples=50, embedding_map=False))
    loader = DataLoader(Fixed(scores(PREDS_ABSENT), LABELS), batch_size=3)
    with pytest.warns(UserWarning, match="no samples of class.*df"):
        trainer.test(Replay(), loader, verbose=False)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    expected = EXPECTED["absent"]
    with (tmp_path / "evaluation" / "test_classification_report.csv").open(newline="") as handle:
        report = {r["class"]: r for r in csv.DictReader(handle)}
    assert report["df"]["f1"] == "n/a" and report["df"]["support"] == "0"
    for column, name in (("precision", "macro_precision"), ("recall", "balanced_acc"), ("f1", "macro_f1")):
        assert float(report["macro avg"][column]) == pytest.approx(metrics[f"test/{name}"], abs=1e-4), column
        assert metrics[f"test/{name}"] == pytest.approx(expected[name], abs=1e-6), name
    assert metrics["test/macro_auroc"] == pytest.approx(expected["macro_auroc"], abs=1e-6)
    for name in ("balanced_acc", "macro_f1"):
        assert metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] <= metrics[f"test/{name}_ci_high"], name


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("png", [True, False])
def test_the_confusion_matrix_picture_is_optional_its_csv_is_not(tmp_path: Path, png: bool) -> None:
    trainer = replay_trainer(tmp_path, Evaluation(bootstrap_resamples=0, embedding_map=False, confusion_matrix_png=png))
    trainer.test(Replay(), DataLoader(Fixed(scores(PREDS_ABSENT), LABELS), batch_size=3), verbose=False)
    assert (tmp_path / "evaluation" / "test_confusion_matrix.csv").is_file()
    assert (tmp_path / "evaluation" / "test_confusion_matrix.png").is_file() == png
