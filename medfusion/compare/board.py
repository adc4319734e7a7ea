"""The results of a comparison: one row per cell, the leaderboard (one row per configuration: mean ± std and the
95% t-interval over seeds of every test set's metrics), the paired difference of each configuration against the
best on the same test cases, and the Markdown of both."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from medfusion.compare.axes import NAMED, label
from medfusion.data.errors import ConfigError
from medfusion.evaluation import delong_multiclass, paired_bootstrap_difference
from medfusion.evaluation.bootstrap import GRADED_METRICS
from medfusion.evaluation.bootstrap import METRICS as BOOTSTRAP_METRICS

METRICS = ("macro_f1", "balanced_acc", "macro_auroc", "acc", "ece", "qwk", "grade_mae")  # graded: qwk, grade_mae
LOWER_IS_BETTER = {"ece", "grade_mae"}
RANGES = {"qwk": (-1.0, 1.0), "grade_mae": (0.0, math.inf)}  # the others lie in [0, 1]
PAIRED_METRICS = {*BOOTSTRAP_METRICS, *GRADED_METRICS}  # what the paired bootstrap computes
# threads: torch's intra-op threads the cell trained with (another count may change its last digits, see run_cell)
CELL_COLUMNS = ("name", "configuration", "seed", "params", "trainable_params", "epochs", "fit_s", "test_s", "threads")


def result_columns(result: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's axis values as columns (a ``result.json`` of an earlier version: its fusion, head and loss)."""
    if "columns" in result:
        return dict(result["columns"])
    return {k: label(result[k]) for k in NAMED if result.get(k)}


def results_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per cell: its name and configuration, its axis values, the seed, the metrics of the test set
    (``macro_f1``, ...; its loss as ``test_loss``), of every other test set (``test_<name>/macro_f1``), of the
    training rows (``train_macro_f1``), then parameters and times."""
    rows = []
    for result in results:
        row: dict[str, Any] = {"name": result["name"], "configuration": result["name"].rsplit("-", 1)[0]}
        row |= result_columns(result) | {k: result.get(k) for k in CELL_COLUMNS[2:]}
        for key, value in result["metrics"].items():
            prefix, _, name = key.partition("/")
            if prefix == "test":
                row["test_loss" if name == "loss" else name] = value
            elif prefix.startswith("test_"):
                row[key] = value
        row |= {f"train_{k.removeprefix('train/')}": v for k, v in result.get("train_metrics", {}).items()}
        rows.append(row)
    return pd.DataFrame(rows)


def other_test_sets(frame: pd.DataFrame) -> list[str]:
    """The other test sets (``test_<name>``) of a results table or leaderboard, in column order."""
    return list(dict.fromkeys(c.split("/")[0] for c in frame.columns if c.startswith("test_") and "/" in c))


def mean_interval(
    values: pd.Series, confidence: float = 0.95, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)`` over seeds: the Student-t interval of the mean, clipped to the metric's range
    ``bounds`` (NaN bounds for one seed)."""
    values = values.dropna().astype(float)
    n, mean = len(values), float(values.mean()) if len(values) else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def metric_name(column: str) -> str:
    """``test_b/macro_f1`` -> ``macro_f1``; ``train_acc`` -> ``acc``."""
    return column.rsplit("/", 1)[-1].removeprefix("train_")


def summarised(table: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The columns the leaderboard summarises: the test set's metrics, every other test set's, the training
    rows'."""
    columns = [m for m in metrics if m in table]
    columns += [f"{s}/{m}" for s in other_test_sets(table) for m in metrics if f"{s}/{m}" in table]
    return columns + [f"train_{m}" for m in metrics if f"train_{m}" in table]


def leaderboard(
    table: pd.DataFrame,
    metric: str = "macro_f1",
    metrics: Sequence[str] = METRICS,
    confidence: float = 0.95,
    keys: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per configuration (the values of ``keys``, default the fusion, head and loss columns present),
    ranked by the mean of ``metric``: for each summarised column (:func:`summarised`) its ``_mean``, ``_std``,
    ``_ci_low`` and ``_ci_high`` over seeds, then the seeds, parameter counts and mean fit time."""
    keys = list(keys) if keys is not None else [k for k in NAMED if k in table]
    table = table.assign(**{k: table[k].fillna("") for k in keys if table[k].dtype == object})
    groups = table.groupby(keys, sort=False, dropna=False) if keys else [((), table)]
    rows = []
    for group, runs in groups:
        values = group if isinstance(group, tuple) else (group,)
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        if "configuration" in runs:
            row["configuration"] = runs["configuration"].iloc[0]
        row["seeds"] = len(runs)
        for column in summarised(runs, metrics):
            bounds = RANGES.get(metric_name(column), (0.0, 1.0))
            row[f"{column}_mean"], row[f"{column}_std"], row[f"{column}_ci_low"], row[f"{column}_ci_high"] = (
                mean_interval(runs[column], confidence, bounds)
            )
        row["params"] = int(runs["params"].iloc[0])
        row["trainable_params"] = int(runs["trainable_params"].iloc[0])
        row["fit_s"] = float(runs["fit_s"].mean())
        rows.append(row)
    board = pd.DataFrame(rows).sort_values(f"{metric}_mean", ascending=metric in LOWER_IS_BETTER, kind="stable")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ paired statistics
def read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """``(ids, labels, probs [N, C], class names)`` of an ``evaluation/<set>_predictions.csv``, sorted by id."""
    frame = pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False).sort_values("id", kind="stable")
    columns = [c for c in frame.columns if c.startswith("prob_")]
    probs = frame[columns].to_numpy(dtype=np.float64)
    return frame["id"].tolist(), frame["label"].tolist(), probs, [c.removeprefix("prob_") for c in columns]


def paired_against_best(
    board: pd.DataFrame,
    predictions: Mapping[str, Sequence[Path]],
    metric: str = "macro_f1",
    resamples: int = 1000,
    delong: bool = False,
    graded: bool = False,
) -> pd.DataFrame:
    """``board`` with each configuration's paired difference to the best (rank 1) on the same test cases:
    ``<metric>_diff`` (its mean seeds' metric minus the best's, on the test set), ``_diff_low``/``_diff_high`` (the
    95% paired-bootstrap interval: every resample draws the same cases for both, each configuration scoring the
    mean of its seeds' metrics), ``indistinguishable`` (the interval contains 0; the best itself: True) and, with
    ``delong``, ``delong_p`` (DeLong's test of the seed-averaged probabilities' AUROC against the best's; see
    :func:`~medfusion.evaluation.delong_multiclass`). ``predictions`` maps a configuration to its cells' test
    prediction files. Refuses configurations tested on different cases."""
    if metric not in PAIRED_METRICS:
        return board
    loaded = {config: [read_predictions(p) for p in paths] for config, paths in predictions.items()}
    reference = next(iter(loaded.values()))[0]
    names, class_names = sorted(set(reference[1])), reference[3]
    for config, runs in loaded.items():
        for ids, labels, _, _ in runs:
            if ids != reference[0] or labels != reference[1]:
                raise ConfigError(
                    f"{config}: its test predictions hold other cases than {next(iter(loaded))}'s; a paired "
                    "comparison needs the same test cases in every cell (same data, split seed and test sets)"
                )
    index = {name: i for i, name in enumerate(class_names)}
    if not set(names) <= set(index):
        raise ConfigError(f"test labels {sorted(set(names) - set(index))} are not among the classes {class_names}")
    labels = torch.tensor([index[name] for name in reference[1]])
    runs_of = {config: [torch.from_numpy(probs) for _, _, probs, _ in runs] for config, runs in loaded.items()}
    best = board.loc[board["rank"] == 1, "configuration"].iloc[0]
    board = board.copy()
    columns: dict[str, list[Any]] = {f"{metric}_diff": [], f"{metric}_diff_low": [], f"{metric}_diff_high": []}
    columns |= {"indistinguishable": []} | ({"delong_p": []} if delong else {})
    for config in board["configuration"]:
        difference = paired_bootstrap_difference(
            runs_of[config], runs_of[best], labels, metric, resamples=resamples, graded=graded
        )
        columns[f"{metric}_diff"].append(difference.difference)
        columns[f"{metric}_diff_low"].append(difference.low)
        columns[f"{metric}_diff_high"].append(difference.high)
        columns["indistinguishable"].append(config == best or not difference.distinguishable)
        if delong:
            mean_a = torch.stack(runs_of[config]).mean(0).numpy()
            mean_b = torch.stack(runs_of[best]).mean(0).numpy()
            columns["delong_p"].append(1.0 if config == best else delong_multiclass(labels.numpy(), mean_a, mean_b))
    for name, values in columns.items():
        board[name] = values
    return board


# ------------------------------------------------------------------------------------------------------ Markdown
def format_cell(row: pd.Series, name: str) -> str:
    """``0.912 ± 0.010 [0.887, 0.937]`` (mean ± std [95% CI]), or the mean alone for one seed."""
    mean, std, low, high = (row[f"{name}_{part}"] for part in ("mean", "std", "ci_low", "ci_high"))
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f} [{low:.3f}, {high:.3f}]"


def format_difference(row: pd.Series, metric: str) -> str:
    """``best``, or ``-0.021 [-0.040, -0.003]`` with ``≈`` when not distinguishable from the best."""
    if row["rank"] == 1:
        return "best"
    diff, low, high = (row[f"{metric}_diff{part}"] for part in ("", "_low", "_high"))
    marker = " ≈" if row["indistinguishable"] else ""
    return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]{marker}"


def markdown(
    board: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    keys: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    metric: str = "macro_f1",
) -> str:
    """The leaderboard as a Markdown table: the configuration's axis values (headed by their short ``names``), the
    test metrics as mean ± std [95% CI over seeds], each other test set's metrics as a block of its own, the
    paired difference to the best when computed, trainable parameters, mean fit time and seeds."""
    keys = list(keys) if keys is not None else [k for k in NAMED if k in board and (board[k] != "").any()]
    names = dict(names or {})
    shown = [m for m in metrics if f"{m}_mean" in board]
    blocks = [f"{s}/{m}" for s in other_test_sets(board) for m in metrics if f"{s}/{m}_mean" in board]
    paired = f"{metric}_diff" in board
    header = ["rank", *(names.get(k, k) for k in keys), *shown, *(b.replace("/", " ") for b in blocks)]
    header += [*([f"Δ{metric} vs best [95% paired CI]"] if paired else []), "trainable params", "fit s", "seeds"]
    header += ["DeLong p"] if "delong_p" in board else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in board.iterrows():
        cells = [str(row["rank"]), *(format_key(row[k]) for k in keys)]
        cells += [format_cell(row, m) for m in [*shown, *blocks]]
        cells += [format_difference(row, metric)] if paired else []
        cells += [f"{row['trainable_params']:,}", f"{row['fit_s']:.1f}", str(row["seeds"])]
        cells += [f"{row['delong_p']:.3g}"] if "delong_p" in board else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_key(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
