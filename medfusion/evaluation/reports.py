"""Confusion matrices, per-class reports and 2-D embedding maps, as tensors, CSV files and PNG figures.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot), so no global backend state is touched.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

_DPI = 120
REPORT_COLUMNS = ("class", "precision", "recall", "f1", "support")
_SCORES = ("precision", "recall", "f1")
ReportRow = dict[str, float | str | int | None]  # a score is None where undefined (class in no target, no prediction)


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[C, C]`` int64 counts; row = true class, column = predicted class."""
    if preds.ndim != 1 or preds.shape != labels.shape:
        raise ValueError(
            f"expected preds and labels of the same shape [N], got {tuple(preds.shape)} and {tuple(labels.shape)}"
        )
    preds, labels = preds.detach().cpu().long(), labels.detach().cpu().long()
    for name, values in (("preds", preds), ("labels", labels)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _check_matrix(cm: Tensor, class_names: Sequence[str]) -> None:
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"expected a square confusion matrix with {len(class_names)} classes, got {tuple(cm.shape)}")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _average(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """Weighted mean of the defined (not None) values; None if no value with positive weight is defined."""
    pairs = [(value, weight) for value, weight in zip(values, weights, strict=True) if value is not None]
    total = sum(weight for _, weight in pairs)
    return sum(value * weight for value, weight in pairs) / total if total else None


def classification_report(cm: Tensor, class_names: Sequence[str]) -> list[ReportRow]:
    """Per-class precision, recall, F1 and support, then ``macro avg`` and ``weighted avg`` rows (like sklearn).

    Follows the macro-average convention of :mod:`medfusion.evaluation`, so ``macro avg`` equals the logged
    ``macro_precision``/``macro_recall`` (= ``balanced_acc``)/``macro_f1``: a class absent from both the targets and
    the predictions gets support 0 and None (no defined value) and is left out of the averages; in every other class
    a zero division gives 0.0. Each average row is the mean of the non-None cells above it (weighted by support).
    """
    _check_matrix(cm, class_names)
    cm = cm.detach().cpu().to(torch.float64)
    tp, true_counts, pred_counts = cm.diagonal().tolist(), cm.sum(1).tolist(), cm.sum(0).tolist()
    rows: list[ReportRow] = []
    scores: dict[str, list[float | None]] = {key: [] for key in _SCORES}
    for name, hits, support, predicted in zip(class_names, tp, true_counts, pred_counts, strict=True):
        occurs = support > 0 or predicted > 0
        values = (_ratio(hits, predicted), _ratio(hits, support), _ratio(2 * hits, support + predicted))
        for key, value in zip(_SCORES, values, strict=True):
            scores[key].append(value if occurs else None)
        rows.append({"class": name, **{key: scores[key][-1] for key in _SCORES}, "support": int(support)})
    averages: list[ReportRow] = []
    for average, class_weights in (("macro avg", [1.0] * len(rows)), ("weighted avg", true_counts)):
        averages.append(
            {
                "class": average,
                **{key: _average(scores[key], class_weights) for key in _SCORES},
                "support": int(sum(true_counts)),
            }
        )
    return rows + averages


def _cell(value: float | str | int | None) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def write_classification_report(rows: Sequence[ReportRow], path: Path) -> None:
    """Write ``classification_report`` rows as CSV (class,precision,recall,f1,support; floats to 4 decimals).

    Undefined values (classes absent from the targets and the predictions) are written ``n/a``, which pandas
    reads as NaN.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_COLUMNS)
        for row in rows:
            writer.writerow([row["class"], *(_cell(row[key]) for key in _SCORES), row["support"]])


def write_confusion_matrix(
    cm: Tensor, class_names: Sequence[str], csv_path: Path, png_path: Path | None = None, title: str = ""
) -> None:
    """Write the counts as CSV (header ``true\\predicted,<classes>``) and optionally as an annotated heatmap PNG.

    The heatmap is coloured by the row-normalised fraction (recall per true class); each cell shows the count and
    that percentage.
    """
    _check_matrix(cm, class_names)
    counts = cm.detach().cpu().long().numpy()
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, counts.tolist(), strict=True):
            writer.writerow([name, *row])
    if png_path is None:
        return

    row_totals = counts.sum(1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    num_classes = len(class_names)
    side = max(4.0, 0.9 * num_classes + 2.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class", shrink=0.8)
    font_size = 9 if num_classes <= 8 else 7
    for i in range(num_classes):
        for j in range(num_classes):
            color = "white" if fractions[i, j] > 0.5 else "black"
            text = f"{counts[i, j]}\n{100 * fractions[i, j]:.1f}%"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=font_size)
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=_DPI)


def _pca_2d(points: np.ndarray) -> np.ndarray:
    """First two principal-component scores (sign-fixed; zero columns where the rank is below 2)."""
    centered = points - points.mean(0)
    u, s, vt = np.linalg.svd(centered, full_matrices=False)
    scores = np.zeros((points.shape[0], 2))
    k = min(2, s.shape[0])
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(1)])
    scores[:, :k] = u[:, :k] * s[:k] * np.where(signs == 0, 1.0, signs)
    return scores


def project_2d(embeddings: Tensor, method: Literal["tsne", "pca"] = "tsne", seed: int = 0) -> np.ndarray:
    """Project ``[N, D]`` embeddings to ``[N, 2]`` float64 coordinates with t-SNE or PCA.

    t-SNE uses perplexity ``min(30, (N - 1) / 3)``, PCA initialisation and ``random_state=seed``; with fewer than
    4 samples or a single feature, where t-SNE is ill-defined, it falls back to PCA.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"expected embeddings of shape [N, D] with N >= 1, got {tuple(embeddings.shape)}")
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    points = embeddings.detach().cpu().to(torch.float64).numpy()
    if not np.isfinite(points).all():
        raise ValueError("embeddings contain NaN or infinite values")
    n, dim = points.shape
    if method == "pca" or n < 4 or dim < 2:
        return _pca_2d(points)
    from sklearn.manifold import TSNE  # deferred: scikit-learn is slow to import and only needed here

    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(points), dtype=np.float64)


def embedding_map(
    embeddings: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    path: Path,
    method: Literal["tsne", "pca"] = "tsne",
    seed: int = 0,
    title: str = "",
) -> Path:
    """Scatter the ``project_2d`` coordinates coloured by class (legend of the classes present); returns the PNG."""
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"expected labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    labels_np = labels.detach().cpu().long().numpy()
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}) to have a class name")
    coords = project_2d(embeddings, method, seed)

    colors = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    marker_size = float(np.clip(3000 / coords.shape[0], 4, 30))
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    for index, name in enumerate(class_names):
        members = labels_np == index
        if members.any():
            ax.scatter(*coords[members].T, s=marker_size, color=colors(index % colors.N), label=name, alpha=0.8)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=max(1.0, 20 / marker_size))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{'t-SNE' if method == 'tsne' else 'PCA'} of {coords.shape[0]} embeddings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path
