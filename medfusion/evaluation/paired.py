"""Paired comparisons of models evaluated on the same test cases: the paired bootstrap difference of a metric, and
DeLong's test of two correlated AUROCs.

Both resample or rank the *same* cases for the two models, so the case-to-case variation they share cancels: two
models whose separate intervals overlap can still differ clearly (and the reverse), which unpaired intervals
cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from medfusion.evaluation.bootstrap import resample_counts, weighted_metrics  # weighted_metrics validates


@dataclass(frozen=True)
class PairedDifference:
    """``metric(a) - metric(b)`` on the test set itself and its percentile-bootstrap interval over resampled cases."""

    difference: float
    low: float
    high: float

    @property
    def distinguishable(self) -> bool:
        """False when the interval contains 0."""
        return not (self.low <= 0.0 <= self.high)


def _seed_average(runs: Sequence[Tensor], labels: Tensor, weights: Tensor, metric: str, graded: bool) -> Tensor:
    """The metric of each weighted copy [R], averaged over the runs (the seeds) of one configuration."""
    return torch.stack([weighted_metrics(probs, labels, weights, graded)[metric] for probs in runs]).mean(0)


def paired_bootstrap_difference(
    runs_a: Sequence[Tensor],
    runs_b: Sequence[Tensor],
    labels: Tensor,
    metric: str = "macro_f1",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    graded: bool = False,
) -> PairedDifference:
    """The paired bootstrap difference of ``metric`` between configurations a and b on the same N test cases.

    ``runs_a`` and ``runs_b`` hold the probabilities ``[N, C]`` of each seed of a configuration, rows in the order
    of ``labels``. Each resample draws N cases with replacement, once for both; on it a configuration scores the
    mean of its seeds' metrics (the seeds are pooled: they need not match, nor be as many), and the difference is
    a's minus b's. Returns the difference on the test set itself and the percentile interval of the resampled
    differences. A configuration against itself gives 0 and [0, 0].
    """
    if not runs_a or not runs_b:
        raise ValueError("each configuration needs the predictions of at least one run")
    runs_a, runs_b = [p.detach().cpu().double() for p in runs_a], [p.detach().cpu().double() for p in runs_b]
    ones = torch.ones(1, len(labels), dtype=torch.float64)
    point = _seed_average(runs_a, labels, ones, metric, graded) - _seed_average(runs_b, labels, ones, metric, graded)
    differences = torch.cat([
        _seed_average(runs_a, labels, counts, metric, graded) - _seed_average(runs_b, labels, counts, metric, graded)
        for counts in resample_counts(len(labels), resamples, seed)
    ])  # fmt: skip
    if differences.isnan().all():
        return PairedDifference(float(point), math.nan, math.nan)
    alpha = (1 - confidence) / 2
    levels = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    low, high = torch.nanquantile(differences, levels).tolist()
    return PairedDifference(float(point), low, high)


@dataclass(frozen=True)
class DeLongResult:
    """The two AUROCs, the z statistic of their difference and its two-sided p-value."""

    auc_a: float
    auc_b: float
    z: float
    p_value: float


def _placements(scores: np.ndarray, positive: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's placement values of the positives (V10) and negatives (V01), by midranks (Sun & Xu,
    2014): ties count 1/2."""
    pos, neg = scores[positive], scores[~positive]
    m, n = len(pos), len(neg)
    all_ranks = stats.rankdata(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - stats.rankdata(pos)) / n  # per positive: the share of negatives it beats
    v01 = 1.0 - (all_ranks[m:] - stats.rankdata(neg)) / m  # per negative: the share of positives above it
    return float(v10.mean()), v10, v01


def delong_test(positive: Sequence[bool] | np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """DeLong, DeLong & Clarke-Pearson (1988): are two AUROCs on the same cases different?

    ``positive`` marks the positive cases, ``scores_a`` and ``scores_b`` are the two models' scores of every case.
    The variance of the AUROC difference comes from the placement values' covariance between the two models;
    identical scores give z = 0 and p = 1.
    """
    positive = np.asarray(positive, dtype=bool)
    scores_a, scores_b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if not (len(positive) == len(scores_a) == len(scores_b)):
        raise ValueError("positive, scores_a and scores_b must hold one value per case")
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs positive and negative cases")
    auc_a, v10_a, v01_a = _placements(scores_a, positive)
    auc_b, v10_b, v01_b = _placements(scores_b, positive)
    s10 = np.cov(np.stack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.stack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    if variance <= 1e-15:
        return DeLongResult(auc_a, auc_b, 0.0, 1.0)
    z = (auc_a - auc_b) / math.sqrt(variance)
    return DeLongResult(auc_a, auc_b, z, float(2 * stats.norm.sf(abs(z))))


def delong_multiclass(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """DeLong's p-value of two models' AUROCs on ``labels``: the positive class's for two classes; for more, the
    one-vs-rest test of each class present with both outcomes, Holm-corrected, and the smallest adjusted p (does
    any class's AUROC differ)."""
    labels = np.asarray(labels)
    classes = [1] if probs_a.shape[1] == 2 else range(probs_a.shape[1])
    p_values = [
        delong_test(labels == c, probs_a[:, c], probs_b[:, c]).p_value
        for c in classes
        if 0 < (labels == c).sum() < len(labels)
    ]
    if not p_values:
        return math.nan
    return min(1.0, len(p_values) * min(p_values))  # Holm's smallest adjusted p-value
