"""``medfusion compare``: a grid of configurations × seeds trained from one base config, summarised in a
leaderboard (CSV, Markdown, plots) of every test set's metrics as mean ± std and 95% CI over seeds, with each
configuration's paired bootstrap difference to the best on the same test cases.

The axes are the named ones (fusions, heads, losses: registered names, classes or config fragments) and any other
``medfusion fit`` option (``axes: {model.lr: [...], data.train_fraction: [...]}``), crossed (``mode: product``) or
varied one at a time around a base point (``mode: one_at_a_time``). Each cell is a ``fit`` and a ``test`` of its
best epoch in its own directory ``<out_dir>/cells/<name>/``; its ``result.json`` is written last, so an
interrupted grid re-run with the same arguments repeats only the unfinished cells. With frozen encoders and
``data.feature_cache`` (``configs/compare/frozen_encoders.yaml``) the encoders' features are computed once and
every cell trains fusion + head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medfusion.compare.axes import Axis, Cell, build_cells, cell_args, item_args, label, make_axes
from medfusion.compare.board import (
    LOWER_IS_BETTER,
    METRICS,
    RANGES,
    leaderboard,
    markdown,
    mean_interval,
    paired_against_best,
    results_table,
)
from medfusion.compare.cells import check_same_grid, run_cell
from medfusion.compare.grid import run_grid

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "RANGES",
    "Axis",
    "Cell",
    "build_cells",
    "cell_args",
    "check_same_grid",
    "compare_main",
    "compare_parser",
    "item_args",
    "label",
    "leaderboard",
    "make_axes",
    "markdown",
    "mean_interval",
    "paired_against_best",
    "results_table",
    "run_cell",
    "run_grid",
]


def compare_parser() -> Any:
    """The parser of ``medfusion compare`` (also reads its ``--config`` files, e.g. configs/compare/demo.yaml)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="medfusion compare", description=compare_main.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file holding the options below")
    parser.add_argument("--base", type=list[str], required=True, help="configs of every cell, as for medfusion fit")
    parser.add_argument("--fusions", type=list[str] | None, default=None, help="names or config fragments")
    parser.add_argument("--heads", type=list[str] | None, default=None, help="names or config fragments")
    parser.add_argument("--losses", type=list[str] | None, default=None, help="loss classes or config fragments")
    parser.add_argument(
        "--axes",
        type=dict[str, list[Any]] | None,
        default=None,
        help='any medfusion fit option with its values, e.g. \'{"model.lr": [0.001, 0.003]}\'; "config": fragments',
    )
    parser.add_argument(
        "--mode",
        type=str,
        default="product",
        choices=["product", "one_at_a_time"],
        help="cross the axes, or vary each alone",
    )
    parser.add_argument("--base_point", type=dict[str, Any] | None, default=None, help="one_at_a_time: the axes' base")
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2])
    parser.add_argument("--overrides", type=list[str], default=[], help="extra medfusion fit arguments of every cell")
    parser.add_argument("--out_dir", type=str, default="runs/compare")
    parser.add_argument("--keep_checkpoints", type=bool, default=False)
    parser.add_argument("--metric", type=str, default="macro_f1", help="the test metric that ranks the leaderboard")
    parser.add_argument("--workers", type=int, default=1, help="cells trained at once, each in its own process")
    parser.add_argument("--delong", type=bool, default=False, help="add DeLong's AUROC test against the best")
    parser.add_argument("--report", type=bool, default=False, help="train nothing: print the finished cells' report")
    return parser


def compare_main(argv: Sequence[str]) -> None:
    """medfusion compare --config configs/compare/demo.yaml: train a grid of configurations (fusions, heads, losses
    and any option as axes, crossed or one at a time) × seeds from base configs and write a leaderboard (mean ± std
    and 95% CI over seeds, paired differences to the best) as CSV, Markdown and plots. Re-running it with the same
    arguments skips the finished cells; --report true prints the report of the finished cells."""
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
        axes=args.axes,
        mode=args.mode,
        base_point=args.base_point,
        workers=args.workers,
        delong=args.delong,
        report_only=args.report,
    )
