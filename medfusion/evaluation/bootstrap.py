"""Classification metrics of weighted copies of a data set, and percentile-bootstrap confidence intervals.

A bootstrap resample of N predictions is represented by the multinomial counts of how often each sample was
drawn, so R resamples are a weight matrix ``[R, N]`` and every metric is computed for all of them at once.
Macro averages follow the convention of :mod:`medfusion.evaluation`, within each resample: with unit weights the
metrics equal the logged ones of :func:`medfusion.metrics.classification_metrics` (micro accuracy; macro recall and
F1 over the classes with ``tp + fp + fn > 0``; macro AUROC over the classes with positive and negative weight).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

METRICS = ("acc", "balanced_acc", "macro_f1", "macro_auroc")
GRADED_METRICS = ("qwk", "grade_mae")  # with graded=True: the classes are grades in index order
_CHUNK_ELEMENTS = 2**22  # resamples per chunk * N: bounds the [R, N] float64 intermediates to ~32 MiB each


def _validate_predictions(scores: Tensor, labels: Tensor) -> None:
    """Raise ValueError unless ``scores`` is a non-empty [N, C] tensor and ``labels`` a matching [N] class index."""
    if scores.ndim != 2:
        raise ValueError(f"expected probabilities/logits of shape [N, C], got shape {tuple(scores.shape)}")
    n, num_classes = scores.shape
    if n == 0 or num_classes < 2:
        raise ValueError(f"need at least one sample and two classes, got shape {tuple(scores.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"expected labels of shape ({n},) to match the scores, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0 (torchmetrics' zero-division rule)."""
    return torch.where(denominator > 0, numerator / denominator, 0.0)


def _macro_average(per_class: Tensor, included: Tensor) -> Tensor:
    """Mean of ``per_class`` [R, C] over the classes where ``included`` [R, C] is true (0 if there are none)."""
    included = included.to(per_class.dtype)
    return _safe_divide((per_class * included).sum(1), included.sum(1))


def _weighted_auroc(probs: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Macro one-vs-rest AUROC [R] (ties count 1/2) via the weighted Mann-Whitney statistic; NaN if undefined."""
    num_resamples = weights.shape[0]
    aurocs = []
    for c in range(probs.shape[1]):
        _, tie_bin = torch.unique(probs[:, c], sorted=True, return_inverse=True)
        num_bins = int(tie_bin.max()) + 1
        positive_weights = weights * (labels == c).to(weights.dtype)
        pos = weights.new_zeros(num_resamples, num_bins).index_add_(1, tie_bin, positive_weights)
        neg = weights.new_zeros(num_resamples, num_bins).index_add_(1, tie_bin, weights - positive_weights)
        neg_below = neg.cumsum(1) - neg  # negative weight with a strictly lower score
        pairs = pos.sum(1) * neg.sum(1)
        wins = (pos * (neg_below + 0.5 * neg)).sum(1)
        aurocs.append(torch.where(pairs > 0, wins / pairs, torch.nan))
    return torch.stack(aurocs, 1).nanmean(1)


def _weighted_graded(predicted: Tensor, labels: Tensor, weights: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Quadratic weighted kappa and mean absolute grade error [R] of the top classes ``predicted`` [N]; kappa is
    NaN where the chance disagreement is 0 (one grade in both the targets and the predictions)."""
    pairs = F.one_hot(labels * num_classes + predicted, num_classes**2).to(torch.float64)
    observed = (weights @ pairs).view(-1, num_classes, num_classes)
    total = observed.sum((1, 2), keepdim=True)
    expected = observed.sum(2, keepdim=True) * observed.sum(1, keepdim=True) / total
    grades = torch.arange(num_classes, dtype=torch.float64, device=weights.device)
    penalty = (grades[:, None] - grades[None, :]) ** 2
    chance = (penalty * expected).sum((1, 2))
    kappa = torch.where(chance > 0, 1 - (penalty * observed).sum((1, 2)) / chance, torch.nan)
    error = (weights @ (labels - predicted).abs().to(torch.float64)) / weights.sum(1)
    return {"qwk": kappa, "grade_mae": error}


def weighted_metrics(probs: Tensor, labels: Tensor, weights: Tensor, graded: bool = False) -> dict[str, Tensor]:
    """Accuracy, balanced accuracy, macro F1 and macro AUROC of R weighted copies of the data set, and with
    ``graded`` quadratic weighted kappa (``qwk``) and the mean absolute grade error (``grade_mae``).

    ``probs`` [N, C] class scores, ``labels`` [N] class indices, ``weights`` [R, N] non-negative per-sample
    weights (e.g. bootstrap counts). Returns float64 tensors of shape [R] keyed by ``acc``, ``balanced_acc``,
    ``macro_f1`` and ``macro_auroc`` (and ``qwk``, ``grade_mae``).
    """
    _validate_predictions(probs, labels)
    if weights.ndim != 2 or weights.shape[1] != probs.shape[0]:
        raise ValueError(f"expected weights of shape [R, {probs.shape[0]}], got shape {tuple(weights.shape)}")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    num_classes = probs.shape[1]
    weights = weights.to(device=probs.device, dtype=torch.float64)
    labels = labels.to(probs.device)

    truth = F.one_hot(labels, num_classes).to(torch.float64)
    predicted = F.one_hot(probs.argmax(1), num_classes).to(torch.float64)
    tp = weights @ (truth * predicted)
    fp = weights @ predicted - tp
    fn = weights @ truth - tp
    seen = (tp + fp + fn) > 0
    metrics = {
        "acc": tp.sum(1) / weights.sum(1),
        "balanced_acc": _macro_average(_safe_divide(tp, tp + fn), seen),
        "macro_f1": _macro_average(_safe_divide(2 * tp, 2 * tp + fp + fn), seen),
        "macro_auroc": _weighted_auroc(probs, labels, weights),
    }
    if graded:
        metrics |= _weighted_graded(probs.argmax(1), labels, weights, num_classes)
    return metrics


def point_metrics(probs: Tensor, labels: Tensor, graded: bool = False) -> dict[str, float]:
    """The metrics of the data set itself (``weighted_metrics`` with unit weights)."""
    ones = torch.ones(1, probs.shape[0], dtype=torch.float64, device=probs.device)
    return {name: float(value[0]) for name, value in weighted_metrics(probs, labels, ones, graded).items()}


def resample_counts(n: int, num_resamples: int, seed: int = 0) -> Iterator[Tensor]:
    """``num_resamples`` bootstrap resamples of N cases as multinomial counts, in chunks ``[R_chunk, N]`` (float64)
    of at most ~4M elements, drawn on the CPU from a ``torch.Generator`` seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - start)
        drawn = torch.randint(0, n, (size, n), generator=generator)
        counts = torch.zeros(size, n, dtype=torch.float64)
        yield counts.scatter_add_(1, drawn, torch.ones(size, n, dtype=torch.float64))


def bootstrap_ci(
    probs: Tensor,
    labels: Tensor,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    graded: bool = False,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap ``(low, high)`` confidence interval of each metric of ``weighted_metrics``.

    Resamples are drawn on the CPU from a ``torch.Generator`` seeded with ``seed`` (same inputs and seed give
    the same intervals) and evaluated in chunks of at most ~4M resample-samples. A class that a resample does not
    contain (in its targets or predictions) is left out of that resample's macro averages, as for the point
    estimate; resamples where macro AUROC is undefined are ignored for that metric (NaN interval if all are).
    """
    _validate_predictions(probs, labels)
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    probs, labels = probs.detach().cpu(), labels.detach().cpu()
    values: dict[str, list[Tensor]] = {name: [] for name in (*METRICS, *(GRADED_METRICS if graded else ()))}
    for counts in resample_counts(probs.shape[0], num_resamples, seed):
        for name, value in weighted_metrics(probs, labels, counts, graded).items():
            values[name].append(value)
    alpha = (1 - confidence) / 2
    levels = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    bounds = {name: torch.nanquantile(torch.cat(chunks), levels).tolist() for name, chunks in values.items()}
    return {name: (low, high) for name, (low, high) in bounds.items()}
