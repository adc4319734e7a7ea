"""``medfusion compare``: a grid of fusions × heads (× losses) × seeds trained from one base config, summarised in
a leaderboard (CSV, Markdown and a plot) of the test metrics' mean ± std and 95% CI over seeds.

Each cell is a ``fit`` then a ``test`` of its best checkpoint, run in this process (no start-up cost per cell),
into ``<out_dir>/cells/<name>/``; its ``result.json`` is written last, so an interrupted grid re-run with the same
arguments skips the finished cells and repeats only the others. With frozen encoders and ``data.feature_cache``
(see ``configs/compare/demo.yaml``) the encoders' features are computed once and every cell trains fusion + head.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

from medfusion.cli import LoggerSaveConfigCallback, MedfusionCLI, own_best_checkpoint
from medfusion.data import MultimodalDataModule
from medfusion.fusion import FUSIONS
from medfusion.heads import HEADS
from medfusion.losses import LOSSES
from medfusion.models import ClassifierModule

METRICS = ("macro_f1", "balanced_acc", "macro_auroc", "acc", "ece", "qwk", "grade_mae")  # graded: qwk, grade_mae
LOWER_IS_BETTER = {"ece", "grade_mae"}
RANGES = {"qwk": (-1.0, 1.0), "grade_mae": (0.0, math.inf)}  # the others lie in [0, 1]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a fusion, a head, a loss (None: the base config's) and a seed."""

    fusion: str
    head: str
    loss: str | None
    seed: int

    @property
    def name(self) -> str:
        parts = [self.fusion, self.head, *([self.loss] if self.loss else [])]
        return "-".join([*(label(part) for part in parts), f"s{self.seed}"])


def grid(
    fusions: Sequence[str], heads: Sequence[str], losses: Sequence[str] | None, seeds: Sequence[int]
) -> list[Cell]:
    """Every combination, seeds innermost (so a cut-short grid has whole configurations)."""
    return [Cell(f, h, loss, s) for f, h, loss, s in itertools.product(fusions, heads, losses or [None], seeds)]


def label(item: str) -> str:
    """The short name of a grid item: a registry name as is, a YAML fragment by its file stem."""
    return Path(item).stem if item.endswith((".yaml", ".yml")) else item.rsplit(".", 1)[-1]


def item_args(kind: str, item: str) -> list[str]:
    """CLI arguments selecting ``item`` for ``kind`` (fusion, head, loss): a YAML fragment (``--config``), a
    registered name (``gated``, ``moe``, ``focal``), or a class (``FocalLoss``, ``my.module.MyHead``)."""
    if item.endswith((".yaml", ".yml")):
        if not Path(item).is_file():
            raise FileNotFoundError(f"The {kind} config {item} does not exist")
        return ["--config", item]
    registry = {"fusion": FUSIONS, "head": HEADS, "loss": LOSSES}[kind]
    if "." in item:
        class_path = item
    elif kind == "loss" and item not in registry and item[:1].isupper():  # a loss class by name: FocalLoss
        class_path = f"medfusion.losses.{item}"
    else:
        cls = registry.get(item)  # an unknown name raises, listing the registered ones
        class_path = f"{cls.__module__}.{cls.__qualname__}"
    return [f"--model.init_args.{kind}", json.dumps({"class_path": class_path})]


def cell_args(cell: Cell, base: Sequence[str], overrides: Sequence[str], cell_dir: Path) -> list[str]:
    """The ``medfusion fit`` arguments of a cell (without the subcommand): the base configs, the cell's fusion, head
    and loss, the overrides, the seed, and a CSV logger writing into ``cell_dir``."""
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(cell_dir.parent), "name": cell_dir.name, "version": ""},
    }
    args = [arg for config in base for arg in ("--config", config)]
    args += item_args("fusion", cell.fusion) + item_args("head", cell.head)
    if cell.loss is not None:
        args += item_args("loss", cell.loss)
    return [
        *args,
        *overrides,
        f"--seed_everything={cell.seed}",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-run info lines (devices, tips, cache messages) off while the grid runs."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_cell(cell: Cell, base: Sequence[str], overrides: Sequence[str], cell_dir: Path, keep_checkpoints: bool) -> dict:
    """Fit, then test the best checkpoint; returns (and writes as ``result.json``) the test metrics, the parameter
    counts and the fit and test times. A half-finished directory of an earlier attempt is removed first."""
    shutil.rmtree(cell_dir, ignore_errors=True)
    cli = MedfusionCLI(
        ClassifierModule,
        MultimodalDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=cell_args(cell, base, overrides, cell_dir),
        run=False,
        auto_configure_optimizers=False,
        save_config_callback=LoggerSaveConfigCallback,
    )
    trainer, model = cli.trainer, cli.model
    start = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - start
    trainer.test(model, datamodule=cli.datamodule, ckpt_path=own_best_checkpoint(trainer), verbose=False)
    test_s = time.perf_counter() - start - fit_s
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test")}
    result = {
        **asdict(cell),
        "name": cell.name,
        "metrics": {k: None if math.isnan(v) else v for k, v in metrics.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": trainer.current_epoch,
        "fit_s": fit_s,
        "test_s": test_s,
    }
    if not keep_checkpoints:
        for checkpoint in cell_dir.rglob("*.ckpt"):
            checkpoint.unlink()
    partial = cell_dir / "result.json.tmp"
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.rename(cell_dir / "result.json")  # last: its presence marks the cell finished
    return result


def check_same_grid(out_dir: Path, base: Sequence[str], overrides: Sequence[str]) -> None:
    """Refuse to mix cells of different base configs in one ``out_dir`` (the grid itself may grow or shrink)."""
    spec = {"base": list(base), "overrides": list(overrides)}
    path = out_dir / "grid.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != spec:
            raise ValueError(
                f"{out_dir} holds a comparison of other base configs or overrides ({previous}); finished cells would "
                f"be mixed with new ones. Use another --out_dir, or delete {out_dir}."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")


def run_grid(
    base: Sequence[str],
    fusions: Sequence[str],
    heads: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
    losses: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | Path = "runs/compare",
    keep_checkpoints: bool = False,
    metric: str = "macro_f1",
) -> pd.DataFrame:
    """Run every unfinished cell, then write ``results.csv`` (one row per cell) and the leaderboard files into
    ``out_dir``; returns the leaderboard (see :func:`leaderboard`)."""
    out_dir = Path(out_dir)
    check_same_grid(out_dir, base, overrides)
    cells = grid(fusions, heads, losses, seeds)
    results = []
    with quiet_lightning():
        for index, cell in enumerate(cells, 1):
            cell_dir = out_dir / "cells" / cell.name
            done = cell_dir / "result.json"
            if done.is_file():
                results.append(json.loads(done.read_text()))
                print(f"[{index}/{len(cells)}] {cell.name}: finished earlier, kept", flush=True)
                continue
            result = run_cell(cell, base, overrides, cell_dir, keep_checkpoints)
            results.append(result)
            value = result["metrics"].get(f"test/{metric}")
            shown = "n/a" if value is None else f"{value:.4f}"
            print(f"[{index}/{len(cells)}] {cell.name}: test/{metric} {shown}, fit {result['fit_s']:.1f} s", flush=True)
    table = results_table(results)
    table.to_csv(out_dir / "results.csv", index=False)
    board = leaderboard(table, metric=metric)
    write_leaderboard(board, out_dir, metric)
    return board


def results_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell: fusion, head, loss, seed, the ``test/`` metrics (prefix dropped; the test loss as
    ``test_loss``), params and times."""
    rows = []
    for result in results:
        metrics = {k.removeprefix("test/"): v for k, v in result["metrics"].items() if k.startswith("test/")}
        metrics["test_loss"] = metrics.pop("loss", None)  # "loss" names the grid's loss column
        keys = ("fusion", "head", "loss", "seed", "params", "trainable_params", "epochs", "fit_s", "test_s")
        row = {k: result[k] for k in keys} | {k: label(result[k]) for k in ("fusion", "head") if result[k]}
        rows.append(row | {"loss": label(result["loss"]) if result["loss"] else None} | metrics)
    return pd.DataFrame(rows)


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


def leaderboard(
    table: pd.DataFrame, metric: str = "macro_f1", metrics: Sequence[str] = METRICS, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per configuration (fusion, head, loss), ranked by the mean of ``metric``: for each metric its
    ``_mean``, ``_std``, ``_ci_low`` and ``_ci_high`` over seeds, the seeds, parameter counts and mean fit time."""
    keys = ["fusion", "head", "loss"]
    rows = []
    for group, runs in table.fillna({"loss": ""}).groupby(keys, sort=False):
        row: dict[str, Any] = dict(zip(keys, group, strict=True))
        row["seeds"] = len(runs)
        for name in (m for m in metrics if m in runs):
            row[f"{name}_mean"], row[f"{name}_std"], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = mean_interval(
                runs[name], confidence, RANGES.get(name, (0.0, 1.0))
            )
        row["params"] = int(runs["params"].iloc[0])
        row["trainable_params"] = int(runs["trainable_params"].iloc[0])
        row["fit_s"] = float(runs["fit_s"].mean())
        rows.append(row)
    board = pd.DataFrame(rows).sort_values(f"{metric}_mean", ascending=metric in LOWER_IS_BETTER, kind="stable")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


def format_cell(row: pd.Series, name: str) -> str:
    """``0.912 ± 0.010 [0.887, 0.937]`` (mean ± std [95% CI]), or the mean alone for one seed."""
    mean, std, low, high = (row[f"{name}_{part}"] for part in ("mean", "std", "ci_low", "ci_high"))
    if math.isnan(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f} [{low:.3f}, {high:.3f}]"


def markdown(board: pd.DataFrame, metrics: Sequence[str] = METRICS) -> str:
    """The leaderboard as a Markdown table (metrics as mean ± std [95% CI over seeds])."""
    shown = [m for m in metrics if f"{m}_mean" in board]
    with_loss = bool((board["loss"] != "").any())
    header = ["rank", "fusion", "head", *(["loss"] if with_loss else []), *shown, "trainable params", "fit s", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in board.iterrows():
        cells = [str(row["rank"]), row["fusion"], row["head"], *([row["loss"]] if with_loss else [])]
        cells += [format_cell(row, m) for m in shown]
        cells += [f"{row['trainable_params']:,}", f"{row['fit_s']:.1f}", str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_leaderboard(board: pd.DataFrame, path: Path, metric: str = "macro_f1") -> None:
    """Bars of the mean ``metric`` with their 95% CI per configuration, and a fusion × head heatmap of the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [" · ".join(x for x in (r.fusion, r.head, r.loss) if x) for r in board.itertuples()]
    means = board[f"{metric}_mean"].to_numpy()
    errors = [means - board[f"{metric}_ci_low"].to_numpy(), board[f"{metric}_ci_high"].to_numpy() - means]
    heat = board.pivot_table(index="fusion", columns="head", values=f"{metric}_mean", aggfunc="max", sort=False)
    figure, (bars, grid_axis) = plt.subplots(
        1, 2, figsize=(13, max(3.0, 0.28 * len(board) + 1)), gridspec_kw={"width_ratios": [3, 2]}
    )
    bars.barh(range(len(board)), means, xerr=errors, color="#4C72B0", ecolor="#333333", capsize=2)
    bars.set_yticks(range(len(board)), names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel(f"test {metric} (mean over seeds, 95% CI)")
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


def write_leaderboard(board: pd.DataFrame, out_dir: Path, metric: str = "macro_f1") -> None:
    """``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.png`` in ``out_dir``; prints the Markdown."""
    board.to_csv(out_dir / "leaderboard.csv", index=False)
    table = markdown(board)
    (out_dir / "leaderboard.md").write_text(table)
    plot_leaderboard(board, out_dir / "leaderboard.png", metric)
    print(table)
    print(f"Leaderboard: {out_dir / 'leaderboard.md'} (also .csv, .png); every cell's run in {out_dir / 'cells'}")


def compare_parser() -> Any:
    """The parser of ``medfusion compare`` (also reads its ``--config`` files, e.g. configs/compare/demo.yaml)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="medfusion compare", description=compare_main.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file holding the options below")
    parser.add_argument("--base", type=list[str], required=True, help="configs of every cell, as for medfusion fit")
    parser.add_argument("--fusions", type=list[str], required=True, help="registered names or config fragments")
    parser.add_argument("--heads", type=list[str], default=["mlp"], help="registered names or config fragments")
    parser.add_argument("--losses", type=list[str] | None, default=None, help="loss classes or config fragments")
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2])
    parser.add_argument("--overrides", type=list[str], default=[], help="extra medfusion fit arguments of every cell")
    parser.add_argument("--out_dir", type=str, default="runs/compare")
    parser.add_argument("--keep_checkpoints", type=bool, default=False)
    parser.add_argument("--metric", type=str, default="macro_f1", help="the test metric that ranks the leaderboard")
    return parser


def compare_main(argv: Sequence[str]) -> None:
    """medfusion compare --config configs/compare/demo.yaml: train a grid of fusions × heads (× losses) × seeds from
    base configs and write a leaderboard (mean ± std and 95% CI over seeds) as CSV, Markdown and PNG. Re-running it
    with the same arguments skips the finished cells."""
    args = compare_parser().parse_args(list(argv))
    run_grid(
        base=args.base,
        fusions=args.fusions,
        heads=args.heads,
        seeds=args.seeds,
        losses=args.losses,
        overrides=args.overrides,
        out_dir=args.out_dir,
        keep_checkpoints=args.keep_checkpoints,
        metric=args.metric,
    )
