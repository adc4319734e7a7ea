"""Permutation importance of the tabular features: how much a metric drops when one clinical variable is shuffled
across the evaluation set, its link to the label (and to the other inputs) broken, its distribution kept."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import move_data_to_device
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from medfusion.evaluation import point_metrics
from medfusion.interpret.gradcam import evaluating
from medfusion.models.base import ClassifierModule

Metric = Callable[[torch.Tensor, torch.Tensor], float]
METRICS = ("acc", "balanced_acc", "macro_f1", "macro_auroc")  # by name: medfusion.evaluation.point_metrics


@dataclass
class PermutationImportance:
    """``drops[j, r]``: the ``metric``'s ``baseline`` (unpermuted) score minus its score with feature
    ``features[j]`` permuted, in repeat ``r``; positive = the model relies on that feature."""

    features: list[str]
    drops: torch.Tensor
    baseline: float
    metric: str

    @property
    def mean(self) -> torch.Tensor:
        """The mean drop per feature [F]."""
        return self.drops.mean(dim=1)

    @property
    def std(self) -> torch.Tensor:
        """The standard deviation of the drops per feature over the repeats [F] (ddof 0, as scikit-learn's)."""
        return self.drops.std(dim=1, correction=0)

    def as_dict(self) -> dict[str, tuple[float, float]]:
        """``{feature: (mean drop, std)}``, most important first."""
        order = self.mean.argsort(descending=True, stable=True).tolist()
        return {self.features[j]: (float(self.mean[j]), float(self.std[j])) for j in order}


def _tabular_name(model: ClassifierModule, modality: str | None) -> str:
    names = [name for name, spec in model.modality_specs.items() if spec["kind"] == "tabular"]
    if not names or (modality is not None and modality not in names):
        raise ValueError(f"{type(model).__name__} has no tabular modality {modality or ''} (modalities: {names})")
    return modality or names[0]


def _metric(metric: str | Metric) -> tuple[str, Metric]:
    if callable(metric):
        name = getattr(metric, "__name__", "metric")
        return ("metric" if name == "<lambda>" else name), metric
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS} or a callable (probs, labels) -> float, got {metric!r}")
    return metric, lambda probs, labels: point_metrics(probs, labels)[metric]


def _score(
    model: ClassifierModule, batches: list[dict[str, Any]], name: str, tabular: dict[str, torch.Tensor], metric: Metric
) -> float:
    """The metric of the model's predictions on ``batches`` with their tabular inputs replaced by ``tabular`` (the
    whole set's rows, in batch order); unlabelled samples (label < 0) are left out."""
    device = model.device
    probs, start = [], 0
    for batch in batches:
        end = start + len(batch["label"])
        rows = {key: values[start:end] for key, values in tabular.items()}
        probs.append(model.predict_logits(move_data_to_device({**batch, name: rows}, device)).float().softmax(-1).cpu())
        start = end
    labels = torch.cat([batch["label"].cpu() for batch in batches])
    labelled = labels >= 0
    return float(metric(torch.cat(probs)[labelled], labels[labelled]))


def permutation_importance(
    model: ClassifierModule,
    batches: Iterable[dict[str, Any]],
    feature_names: Sequence[str] | None = None,
    metric: str | Metric = "macro_f1",
    repeats: int = 5,
    seed: int = 0,
    modality: str | None = None,
    progress: bool = False,
) -> PermutationImportance:
    """Permutation feature importance (Breiman 2001, "Random Forests"; model reliance, Fisher, Rudin & Dominici
    2019, "All Models are Wrong, but Many are Useful") of the tabular modality's features on ``batches``.

    For each feature, ``repeats`` times: shuffle that column across the whole evaluation set (all the batches
    together, among the samples whose tabular inputs are present), recompute ``metric`` and report its drop from
    the unpermuted score. A numeric column moves with its missing flag (value and missingness are one variable);
    a categorical column is its index. ``metric``: a name of :data:`METRICS` (``point_metrics`` of
    :mod:`medfusion.evaluation`) or a callable ``(probs [N, C], labels [N]) -> float``; unlabelled samples
    (label < 0) are left out. ``feature_names``: numeric then categorical columns, default the model's
    ``modality_specs[<tabular>]["features"]``. The shuffles are drawn from a ``torch.Generator`` seeded with
    ``seed`` (same inputs, same result); the model runs ``predict_logits`` in eval mode under ``torch.no_grad()``
    and gets its modes back; ``progress`` shows a progress bar of the shuffles (each one a pass over the whole set).
    Correlated features share their importance: shuffling one leaves its information in the other.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    name = _tabular_name(model, modality)
    label, score_of = _metric(metric)
    batches = list(batches)
    if not batches:
        raise ValueError("permutation_importance needs at least one batch")
    tabular = {key: torch.cat([batch[name][key].cpu() for batch in batches]) for key in batches[0][name]}
    present = torch.cat(
        [
            batch.get("present", {}).get(name, torch.ones(len(batch["label"]), dtype=torch.bool)).cpu().bool()
            for batch in batches
        ]
    )
    columns = [("numeric", j) for j in range(tabular["numeric"].shape[1])]
    columns += [("categorical", j) for j in range(tabular["categorical"].shape[1])]
    names = list(feature_names or model.modality_specs[name].get("features") or [])
    if len(names) != len(columns):
        raise ValueError(f"{len(names)} feature names {names} for {len(columns)} tabular features (numeric first)")
    rows = present.nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    drops = torch.zeros(len(columns), repeats, dtype=torch.float64)
    steps = [(j, r) for j in range(len(columns)) for r in range(repeats)]
    with evaluating(model), torch.no_grad():
        baseline = _score(model, batches, name, tabular, score_of)
        for j, r in tqdm(steps, desc="permutation importance", unit="shuffle", disable=not progress):
            kind, column = columns[j]
            shuffled = rows[torch.randperm(len(rows), generator=generator)]
            permuted = dict(tabular)
            for key in ["numeric", "numeric_missing"] if kind == "numeric" else ["categorical"]:
                permuted[key] = tabular[key].clone()
                permuted[key][rows, column] = tabular[key][shuffled, column]
            drops[j, r] = baseline - _score(model, batches, name, permuted, score_of)
    return PermutationImportance(features=names, drops=drops, baseline=baseline, metric=label)


def permutation_figure(result: PermutationImportance) -> Figure:
    """Horizontal bars of the mean drop per feature with their standard deviation as error bars, the most
    important on top."""
    ranked = result.as_dict()
    figure = Figure(figsize=(6.4, 1.2 + 0.4 * len(ranked)), layout="constrained")
    ax = figure.subplots()
    means, stds = zip(*ranked.values(), strict=True)
    ax.barh(range(len(ranked)), means, xerr=stds, color="tab:blue", capsize=3)
    ax.set_yticks(range(len(ranked)), list(ranked))
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"drop in {result.metric} when permuted (baseline {result.baseline:.3f})")
    ax.set_title(f"permutation importance of the tabular features ({result.drops.shape[1]} repeats)")
    return figure


def save_permutation_importance(result: PermutationImportance, out_dir: Path) -> tuple[Path, Path]:
    """Write ``permutation_importance.png`` (:func:`permutation_figure`) and ``permutation_importance.csv``
    (``feature, <metric>_drop_mean, <metric>_drop_std``, most important first) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, table = out_dir / "permutation_importance.png", out_dir / "permutation_importance.csv"
    permutation_figure(result).savefig(png, dpi=80)
    with table.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["feature", f"{result.metric}_drop_mean", f"{result.metric}_drop_std"])
        writer.writerows([name, f"{mean:.4f}", f"{std:.4f}"] for name, (mean, std) in result.as_dict().items())
    return png, table
