"""The statistics of ``medfusion compare`` beyond the seeds' intervals: the paired bootstrap difference against the
best on the same test cases, DeLong's test, the other test sets as column blocks, and the in-memory best weights
that replace per-epoch checkpoints in a cell."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medfusion.callbacks import BestWeights
from medfusion.compare import leaderboard, make_axes, markdown, paired_against_best, results_table
from medfusion.compare.grid import summarise
from medfusion.evaluation import delong_multiclass, delong_test, paired_bootstrap_difference

LABELS = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def confident(predicted: list[int]) -> torch.Tensor:
    """Probabilities [N, 2] of 0.9 on the predicted class."""
    probs = torch.full((len(predicted), 2), 0.1, dtype=torch.float64)
    probs[torch.arange(len(predicted)), torch.tensor(predicted)] = 0.9
    return probs


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn)


PERFECT = confident(LABELS.tolist())
WRONG_01 = confident([1, 1, 0, 0, 0, 1, 1, 1, 1, 1])  # cases 0 and 1 (class 0) called class 1
WRONG_0 = confident([1, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_a_configuration_against_itself_differs_by_zero() -> None:
    difference = paired_bootstrap_difference([WRONG_01, WRONG_0], [WRONG_01, WRONG_0], LABELS, "macro_f1")
    assert (difference.difference, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert not difference.distinguishable


def test_the_paired_difference_equals_the_hand_computation() -> None:
    # one seed, two errors: class 0 tp 3 fn 2, class 1 tp 5 fp 2; the perfect model scores 1
    one = paired_bootstrap_difference([WRONG_01], [PERFECT], LABELS, "macro_f1", resamples=500)
    expected = (f1(3, 0, 2) + f1(5, 2, 0)) / 2 - 1.0
    assert one.difference == pytest.approx(expected, abs=1e-12)
    assert one.low <= one.difference <= one.high <= 0.0  # no resample favours the erring model
    # seeds pooled: the configuration scores the mean of its seeds' metrics
    pooled = paired_bootstrap_difference([WRONG_01, WRONG_0], [PERFECT], LABELS, "macro_f1")
    second = (f1(4, 0, 1) + f1(5, 1, 0)) / 2
    assert pooled.difference == pytest.approx(((f1(3, 0, 2) + f1(5, 2, 0)) / 2 + second) / 2 - 1.0, abs=1e-12)
    accuracy = paired_bootstrap_difference([WRONG_01], [PERFECT], LABELS, "acc")
    assert accuracy.difference == pytest.approx(-0.2)
    # identical except on cases no resample can hide: many cases, a clear difference, an interval away from 0
    labels = torch.arange(400) % 2
    worse = confident([(y + (i % 5 == 0)) % 2 for i, y in enumerate(labels.tolist())])
    clear = paired_bootstrap_difference([worse], [confident(labels.tolist())], labels, "acc")
    assert clear.difference == pytest.approx(-0.2) and clear.distinguishable and clear.high < 0


def reference_delong(positive: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) as written: the Mann-Whitney kernel over every positive-negative pair."""

    def components(scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        x, y = scores[positive][:, None], scores[~positive][None, :]
        kernel = (x > y) + 0.5 * (x == y)
        return kernel.mean(), kernel.mean(1), kernel.mean(0)

    auc_a, v10_a, v01_a = components(a)
    auc_b, v10_b, v01_b = components(b)
    m, n = len(v10_a), len(v01_a)
    var = (
        (np.var(v10_a, ddof=1) + np.var(v10_b, ddof=1) - 2 * np.cov(v10_a, v10_b)[0, 1]) / m
        + (np.var(v01_a, ddof=1) + np.var(v01_b, ddof=1) - 2 * np.cov(v01_a, v01_b)[0, 1]) / n
    )  # fmt: skip
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a, auc_b, math.erfc(abs(z) / math.sqrt(2))


def test_delong_matches_the_reference_implementation_on_fixed_inputs() -> None:
    rng = np.random.default_rng(7)
    positive = rng.random(120) < 0.4
    a = positive * 0.8 + rng.normal(0, 0.6, 120)
    b = np.round(positive * 0.1 + rng.normal(0, 0.6, 120), 1)  # rounded: ties
    result = delong_test(positive, a, b)
    auc_a, auc_b, p = reference_delong(positive, a, b)
    assert result.auc_a == pytest.approx(auc_a, abs=1e-12) == pytest.approx(roc_auc_score(positive, a))
    assert result.auc_b == pytest.approx(auc_b, abs=1e-12) == pytest.approx(roc_auc_score(positive, b))
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert 0 < result.p_value < 0.05  # a clearly better model on 120 cases
    assert delong_test(positive, a, a).p_value == 1.0
    with pytest.raises(ValueError, match="positive and negative"):
        delong_test(np.ones(4, bool), a[:4], b[:4])
    # three classes: one-vs-rest per class, Holm: the smallest p times the number of classes tested
    labels = rng.integers(0, 3, 90)
    probs_a = rng.dirichlet(np.ones(3), 90) + np.eye(3)[labels]
    probs_b = rng.dirichlet(np.ones(3), 90)
    per_class = [delong_test(labels == c, probs_a[:, c], probs_b[:, c]).p_value for c in range(3)]
    assert delong_multiclass(labels, probs_a, probs_b) == pytest.approx(min(1.0, 3 * min(per_class)))


def write_predictions(path: Path, probs: torch.Tensor, ids: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"id": ids or [f"c{i:02d}" for i in range(len(probs))]})
    frame["label"] = [["benign", "malignant"][y] for y in LABELS.tolist()]
    for c, name in enumerate(["benign", "malignant"]):
        frame[f"prob_{name}"] = probs[:, c].numpy()
    frame.to_csv(path, index=False)
    return path


def result(name: str, seed: int, metrics: dict[str, float]) -> dict:
    return {"name": f"{name}-s{seed}", "seed": seed, "columns": {"fusion": name}, "metrics": metrics,
            "train_metrics": {"train/macro_f1": 0.99}, "params": 10, "trainable_params": 5, "fit_s": 1.0}  # fmt: skip


def test_the_leaderboard_marks_what_the_test_set_cannot_tell_from_the_best(tmp_path: Path) -> None:
    runs = {"good": [PERFECT, PERFECT], "close": [WRONG_0, PERFECT], "poor": [WRONG_01, WRONG_01]}
    results, predictions = [], {}
    for name, seeds in runs.items():
        for seed, probs in enumerate(seeds):
            value = paired_bootstrap_difference([probs], [PERFECT], LABELS).difference + 1
            results.append(result(name, seed, {"test/macro_f1": value, "test_siteb/macro_f1": value / 2}))
            predictions.setdefault(name, []).append(write_predictions(tmp_path / f"{name}{seed}.csv", probs))
    table = results_table(results)
    assert {"macro_f1", "test_siteb/macro_f1", "train_macro_f1"} <= set(table.columns)
    board = leaderboard(table, keys=["fusion"])
    assert list(board["fusion"]) == ["good", "close", "poor"]
    assert "test_siteb/macro_f1_mean" in board and board.loc[0, "test_siteb/macro_f1_mean"] == pytest.approx(0.5)
    board = paired_against_best(board, predictions, "macro_f1", delong=True)
    rows = board.set_index("fusion")
    assert rows.loc["good", "macro_f1_diff"] == 0 and rows.loc["good", "indistinguishable"]
    assert rows.loc["close", "indistinguishable"]  # one error in 20 predictions: within the resampling noise
    assert rows.loc["poor", "macro_f1_diff"] == pytest.approx((f1(3, 0, 2) + f1(5, 2, 0)) / 2 - 1.0)
    assert rows.loc["good", "delong_p"] == 1.0 and 0 <= rows.loc["poor", "delong_p"] <= 1
    text = markdown(board, keys=["fusion"])
    assert "test_siteb macro_f1" in text.splitlines()[0] and "Δmacro_f1 vs best" in text.splitlines()[0]
    assert "| 1 | good |" in text and " ≈ |" in text and "best" in text
    other = {**predictions, "poor": [write_predictions(tmp_path / "other.csv", WRONG_01, [f"x{i}" for i in range(10)])]}
    with pytest.raises(ValueError, match="other cases"):
        paired_against_best(leaderboard(table, keys=["fusion"]), other)


def test_best_weights_keep_the_epoch_a_model_checkpoint_would_keep() -> None:
    module = nn.Linear(2, 1)
    trainer = SimpleNamespace(callback_metrics={}, sanity_checking=False)
    best = BestWeights("val/macro_f1", "max")
    for epoch, value in enumerate([math.nan, 0.5, 0.7, 0.7, 0.6]):
        nn.init.constant_(module.weight, float(epoch))
        trainer.callback_metrics = {"val/macro_f1": torch.tensor(value)}
        best.on_train_epoch_end(trainer, module)
    assert best.restore(module) and (module.weight == 2.0).all()  # the first 0.7, not its tie at epoch 3
    assert best.best == pytest.approx(0.7)
    lowest = BestWeights("val/loss", "min")
    for epoch, value in enumerate([0.9, 0.4, 0.5]):
        nn.init.constant_(module.weight, float(epoch))
        trainer.callback_metrics = {"val/loss": torch.tensor(value)}
        lowest.on_train_epoch_end(trainer, module)
    assert lowest.restore(module) and (module.weight == 1.0).all()
    assert not BestWeights("val/acc").restore(module)  # never validated: nothing to restore


def test_cells_without_prediction_files_are_reported_not_silently_unpaired(tmp_path: Path, capsys) -> None:
    results = [result(name, seed, {"test/macro_f1": 0.5 + 0.1 * seed}) for name in ("a", "b") for seed in (0, 1)]
    axes = make_axes({"fusion": ["a", "b"]}, None)
    board = summarise(results, axes, tmp_path, "macro_f1", delong=False, print_report=False)
    assert "macro_f1_diff" not in board
    assert "No paired differences: 4 cell(s) have no test predictions" in capsys.readouterr().out
    assert (tmp_path / "leaderboard.md").is_file() and (tmp_path / "report.md").is_file()
