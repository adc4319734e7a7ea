"""The pictures of a comparison, written next to its leaderboard:

- ``leaderboard.png``: each configuration's mean test metric with its 95% CI (and a fusion × head map when both
  are axes);
- ``axes.png``: the metric against each numeric axis (one line per setting of the other axes, the CI as a band;
  a log scale for rates and for values spanning a factor of 10 or more);
- ``learning_curve.png``: with a ``data.train_fraction`` axis, the test and the training-rows metric against the
  fraction, the gap between them shaded (a wide gap: over-fitting; both low: under-fitting);
- ``epochs.png``: per configuration, the training and validation accuracy of every seed by epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medfusion.compare.axes import Axis

FRACTION = "data.train_fraction"
RATE_WORDS = ("lr", "rate", "decay")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def row_label(row: pd.Series, keys: Sequence[str], names: Mapping[str, str]) -> str:
    """``concat · mlp · lr=0.001``: the configuration's axis values."""
    parts = []
    for key in keys:
        value = row[key]
        if value == "" or value is None:
            continue
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(shown if key in ("fusion", "head", "loss", "config") else f"{names.get(key, key)}={shown}")
    return " · ".join(parts) or "base"


def plot_leaderboard(
    board: pd.DataFrame,
    path: Path,
    metric: str = "macro_f1",
    keys: Sequence[str] = ("fusion", "head", "loss"),
    names: Mapping[str, str] | None = None,
) -> None:
    """Bars of the mean ``metric`` with their 95% CI per configuration, and a fusion × head heatmap of the mean
    when both are axes of more than one value."""
    plt = pyplot()
    keys = [k for k in keys if k in board]
    labels = [row_label(row, keys, names or {}) for _, row in board.iterrows()]
    means = board[f"{metric}_mean"].to_numpy()
    errors = [means - board[f"{metric}_ci_low"].to_numpy(), board[f"{metric}_ci_high"].to_numpy() - means]
    errors = [[0.0 if math.isnan(e) else e for e in side] for side in errors]
    with_map = all(k in board and board[k].nunique() > 1 for k in ("fusion", "head"))
    figure, panels = plt.subplots(
        1, 2 if with_map else 1, figsize=(13 if with_map else 8, max(3.0, 0.28 * len(board) + 1)), squeeze=False,
        gridspec_kw={"width_ratios": [3, 2]} if with_map else None,
    )  # fmt: skip
    bars = panels[0][0]
    bars.barh(range(len(board)), means, xerr=errors, color="#4C72B0", ecolor="#333333", capsize=2)
    bars.set_yticks(range(len(board)), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel(f"test {metric} (mean over seeds, 95% CI)")
    if with_map:
        heat = board.pivot_table(index="fusion", columns="head", values=f"{metric}_mean", aggfunc="max", sort=False)
        grid_axis = panels[0][1]
        image = grid_axis.imshow(heat.to_numpy(), cmap="viridis", aspect="auto")
        grid_axis.set_xticks(range(heat.shape[1]), heat.columns, rotation=30, ha="right")
        grid_axis.set_yticks(range(heat.shape[0]), heat.index)
        for (i, j), value in pd.DataFrame(heat.to_numpy()).stack().items():
            grid_axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
        grid_axis.set_title(f"mean test {metric}")
        figure.colorbar(image, ax=grid_axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def log_scale(axis: Axis) -> bool:
    """Rates (lr, weight decay, dropout rate ...) and positive values spanning a factor of 10 or more."""
    values = [float(v) for v in axis.values]
    rate = any(word in axis.short.rsplit(".", 1)[-1] for word in RATE_WORDS)
    return min(values) > 0 and (rate or max(values) / min(values) >= 10)


def curves(board: pd.DataFrame, axis: Axis, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """The lines of ``board`` along ``axis``: one per setting of the other axes holding at least two of its
    values, sorted by the axis value."""
    others = [k for k in keys if k != axis.key]
    groups = board.groupby(others, sort=False, dropna=False) if others else [((), board)]
    lines = []
    for group, rows in groups:
        if rows[axis.key].nunique() < 2:
            continue
        values = group if isinstance(group, tuple) else (group,)
        name = " · ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, values, strict=True)) or axis.short
        lines.append((name, rows.sort_values(axis.key)))
    return lines


def band(panel: Any, rows: pd.DataFrame, x: str, column: str, label: str, **style: Any) -> None:
    """The mean of ``column`` along ``x`` with its CI as a shaded band."""
    line = panel.plot(rows[x], rows[f"{column}_mean"], marker="o", label=label, **style)[0]
    low, high = rows[f"{column}_ci_low"], rows[f"{column}_ci_high"]
    if low.notna().any():
        panel.fill_between(rows[x], low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def plot_axes(board: pd.DataFrame, axes: Sequence[Axis], path: Path, metric: str = "macro_f1") -> bool:
    """``axes.png``: the test metric against each numeric axis of two or more values; False when there is none."""
    numeric = [a for a in axes if a.numeric and len(a.values) > 1]
    keys = [a.key for a in axes]
    if not numeric:
        return False
    plt = pyplot()
    figure, panels = plt.subplots(1, len(numeric), figsize=(4.5 * len(numeric), 3.6), squeeze=False)
    for panel, axis in zip(panels[0], numeric, strict=True):
        lines = curves(board, axis, keys)[:8]
        for name, rows in lines:
            band(panel, rows, axis.key, metric, name)
        if log_scale(axis):
            panel.set_xscale("log")
        panel.set_xlabel(axis.short)
        panel.set_ylabel(f"test {metric}")
        panel.grid(alpha=0.3)
        if len(lines) > 1:
            panel.legend(fontsize=7)
    figure.suptitle(f"test {metric} by axis (mean over seeds, 95% CI)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_learning_curve(board: pd.DataFrame, axes: Sequence[Axis], path: Path, metric: str = "macro_f1") -> bool:
    """``learning_curve.png``: the test and training-rows ``metric`` against ``data.train_fraction``, the gap
    shaded; False without that axis or the training metrics."""
    axis = next((a for a in axes if a.key == FRACTION), None)
    if axis is None or f"train_{metric}_mean" not in board or len(axis.values) < 2:
        return False
    plt = pyplot()
    lines = curves(board, axis, [a.key for a in axes])[:4]
    figure, panels = plt.subplots(1, len(lines), figsize=(5.5 * len(lines), 4.0), squeeze=False)
    for panel, (name, rows) in zip(panels[0], lines, strict=True):
        band(panel, rows, FRACTION, f"train_{metric}", "training rows", color="#DD8452")
        band(panel, rows, FRACTION, metric, "test", color="#4C72B0")
        panel.fill_between(
            rows[FRACTION], rows[f"{metric}_mean"], rows[f"train_{metric}_mean"], color="#999999", alpha=0.2,
            hatch="//", linewidth=0, label="generalisation gap",
        )  # fmt: skip
        panel.set_xlabel("training-set fraction")
        panel.set_ylabel(metric)
        panel.set_title(name if len(lines) > 1 else "learning curve", fontsize=9)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_epochs(table: pd.DataFrame, cells_dir: Path, path: Path, limit: int = 40) -> bool:
    """``epochs.png``: per configuration (the first ``limit``), each seed's ``train/acc`` (solid) and ``val/acc``
    (dashed) by epoch, from the cells' ``metrics.csv``; False when no cell has them."""
    configurations = list(dict.fromkeys(table["configuration"]))[:limit]
    histories: dict[str, list[pd.DataFrame]] = {}
    for config in configurations:
        for name in table.loc[table["configuration"] == config, "name"]:
            logged = cells_dir / name / "metrics.csv"
            if not logged.is_file():
                continue
            frame = pd.read_csv(logged)
            columns = [c for c in ("train/acc", "val/acc") if c in frame]
            if "epoch" in frame and columns:
                histories.setdefault(config, []).append(frame.groupby("epoch")[columns].mean())
    if not histories:
        return False
    plt = pyplot()
    count = len(histories)
    ncols = min(4, count)
    nrows = math.ceil(count / ncols)
    figure, panels = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), squeeze=False, sharey=True)
    for panel, (config, runs) in zip(panels.flat, histories.items(), strict=False):
        for seed, history in enumerate(runs):
            color = f"C{seed}"
            if "train/acc" in history:
                panel.plot(history.index, history["train/acc"], color=color, linewidth=1)
            if "val/acc" in history:
                panel.plot(history.index, history["val/acc"], color=color, linewidth=1, linestyle="--")
        panel.set_title(config, fontsize=7)
        panel.grid(alpha=0.3)
    for panel in list(panels.flat)[count:]:
        panel.axis("off")
    figure.supxlabel("epoch (solid: training accuracy, dashed: validation accuracy; a colour per seed)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
