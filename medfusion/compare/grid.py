"""Running a comparison: every unfinished cell (in this process, or in ``workers`` processes), then the results
table, the leaderboard with the paired statistics, the report and the plots."""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from medfusion.compare import cells as cell_runs
from medfusion.compare.axes import Axis, Cell, Mode, build_cells, make_axes
from medfusion.compare.board import METRICS, leaderboard, markdown, paired_against_best, results_table
from medfusion.compare.plots import plot_axes, plot_epochs, plot_leaderboard, plot_learning_curve
from medfusion.data.errors import ConfigError

REPORT_NOTE = (
    "Metrics: mean ± std [95% Student-t interval] over seeds. Δ vs best: each configuration's metric (the mean of "
    "its seeds) minus the best's on the same test cases, with the 95% paired-bootstrap interval (1000 resamples of "
    "the test cases, drawn once for both); ≈ marks a configuration the test set does not distinguish from the "
    "best (the interval contains 0). Training-rows metrics are the tested model's on its own training rows."
)


def start_worker(threads: int, start_method: str) -> None:
    """A worker process of a parallel grid: its share of the cores, Lightning's info lines off, the compare
    process's start method for the cell's DataLoader workers (a spawned process would spawn them too, each
    importing torch anew: ~10 s per loader while a feature cache is computed), and (on Linux) a SIGTERM when the
    compare process dies, so a killed grid leaves no orphan training on."""
    import torch

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    multiprocessing.set_start_method(start_method, force=True)
    torch.set_num_threads(threads)
    for name in cell_runs.QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_one(job: tuple[Cell, Sequence[str], Sequence[str], Path, bool]) -> dict:
    return cell_runs.run_cell(*job)


def cell_results(
    todo: Sequence[tuple[Cell, Path]], base: Sequence[str], overrides: Sequence[str], keep: bool, workers: int
) -> Iterator[dict]:
    """The results of the cells ``todo``, in order, run here (``workers`` 1) or in a pool of spawned processes."""
    jobs = [(cell, list(base), list(overrides), cell_dir, keep) for cell, cell_dir in todo]
    if workers <= 1 or len(jobs) <= 1:
        with cell_runs.quiet_lightning():
            for job in jobs:
                yield cell_runs.run_cell(*job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # not daemonic (a cell's loaders may start workers of their own)
    setup = (threads, multiprocessing.get_start_method())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker, initargs=setup) as pool:
        yield from pool.map(run_one, jobs)


def run_grid(
    base: Sequence[str],
    fusions: Sequence[str] | None = None,
    heads: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    losses: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | Path = "runs/compare",
    keep_checkpoints: bool = False,
    metric: str = "macro_f1",
    axes: Mapping[str, Sequence[Any]] | None = None,
    mode: Mode = "product",
    base_point: Mapping[str, Any] | None = None,
    workers: int = 1,
    delong: bool = False,
    report_only: bool = False,
) -> pd.DataFrame:
    """Run every unfinished cell, then write ``results.csv`` (one row per cell), the leaderboard files, the report
    and the plots into ``out_dir``; returns the leaderboard (see :func:`~medfusion.compare.board.leaderboard`).

    ``fusions``, ``heads`` and ``losses`` are the named axes (None: the base config's), ``axes`` any other
    ``medfusion fit`` option by its dotted key with its values (``{"model.lr": [1e-3, 3e-3]}``; ``config``: config
    fragments); ``mode`` ``product`` runs every combination, ``one_at_a_time`` the base point (``base_point``, or
    every axis' first value) and each axis varied alone. ``report_only`` trains nothing and summarises the finished
    cells.
    """
    out_dir = Path(out_dir)
    grid_axes = make_axes({"fusion": fusions, "head": heads, "loss": losses}, axes)
    cells = build_cells(grid_axes, seeds, mode, base_point)
    cell_runs.check_same_grid(out_dir, base, overrides)
    done = {c.name: out_dir / "cells" / c.name / "result.json" for c in cells}
    finished = {name: json.loads(path.read_text()) for name, path in done.items() if path.is_file()}
    todo = [(c, out_dir / "cells" / c.name) for c in cells if c.name not in finished]
    if report_only:
        if not finished:
            raise ConfigError(f"{out_dir} holds no finished cell of this grid: run it first (without --report)")
        print(f"{len(finished)} of {len(cells)} cells finished; the report covers those", flush=True)
    else:
        for index, cell in enumerate(c for c in cells if c.name in finished):
            print(f"[{index + 1}/{len(cells)}] {cell.name}: finished earlier, kept", flush=True)
        for index, (result, (cell, _)) in enumerate(
            zip(cell_results(todo, base, overrides, keep_checkpoints, workers), todo, strict=False), len(finished) + 1
        ):
            finished[cell.name] = result
            value = result["metrics"].get(f"test/{metric}")
            shown = "n/a" if value is None else f"{value:.4f}"
            print(f"[{index}/{len(cells)}] {cell.name}: test/{metric} {shown}, fit {result['fit_s']:.1f} s", flush=True)
    results = [finished[c.name] for c in cells if c.name in finished]
    return summarise(results, grid_axes, out_dir, metric, delong, print_report=report_only)


def summarise(
    results: Sequence[dict], axes: Sequence[Axis], out_dir: Path, metric: str, delong: bool, print_report: bool
) -> pd.DataFrame:
    """``results.csv``, the leaderboard (``.csv``, ``.md``, ``.png``) with the paired statistics, ``report.md`` and
    the plots of ``results``; prints the leaderboard (``print_report``: the whole report)."""
    table = results_table(results)
    table.to_csv(out_dir / "results.csv", index=False)
    keys = [a.key for a in axes]
    names = {a.key: a.short for a in axes}
    board = leaderboard(table, metric=metric, keys=keys)
    graded = "qwk" in table
    predictions = {
        config: [out_dir / "cells" / name / "evaluation" / "test_predictions.csv" for name in runs["name"]]
        for config, runs in table.groupby("configuration", sort=False)
    }
    missing = [path for paths in predictions.values() for path in paths if not path.is_file()]
    if missing:  # cells of an earlier medfusion wrote no predictions: say so rather than drop the column silently
        print(f"No paired differences: {len(missing)} cell(s) have no test predictions (e.g. {missing[0]}); re-run "
              "those cells (delete their directories) to get them", flush=True)  # fmt: skip
    else:
        board = paired_against_best(board, predictions, metric, delong=delong, graded=graded)
    board.to_csv(out_dir / "leaderboard.csv", index=False)
    text = markdown(board, METRICS, keys, names, metric)
    (out_dir / "leaderboard.md").write_text(text)
    report = f"# Comparison: {len(table)} cells, ranked by test {metric}\n\n{text}\n{REPORT_NOTE}\n"
    (out_dir / "report.md").write_text(report)
    plot_leaderboard(board, out_dir / "leaderboard.png", metric, keys, names)
    pictures = ["leaderboard.png"]
    for name, drawn in (
        ("axes.png", plot_axes(board, axes, out_dir / "axes.png", metric)),
        ("learning_curve.png", plot_learning_curve(board, axes, out_dir / "learning_curve.png", metric)),
        ("epochs.png", plot_epochs(table, out_dir / "cells", out_dir / "epochs.png")),
    ):
        if drawn:
            pictures.append(name)
    print(report if print_report else text)
    print(f"Leaderboard: {out_dir / 'leaderboard.md'} (also .csv; report.md; {', '.join(pictures)}); every cell's run "
          f"in {out_dir / 'cells'}")  # fmt: skip
    return board
