"""Graded diagnosis: ordinal heads (CORAL, CORN) against cross-entropy on the graded demo, over seeds.

    python benchmarks/graded_heads.py [--seeds 0 1 2] [--out_dir runs/graded_heads] [--extra ARG ...]

Each cell is one ``medfusion fit --config configs/demo_graded.yaml`` (image + text, concat fusion, 5 epochs at
64 px, best checkpoint by validation quadratic weighted kappa) with its seed: cross-entropy on an MLP head
(``configs/head/mlp.yaml`` + ``configs/loss/ce.yaml``, graded metrics on), CORAL (the config's own) and CORN
(``configs/head/corn.yaml`` + ``configs/loss/corn.yaml``). The data and its split are the same for every cell.
Finished cells are read back from their ``metrics.json``, so an interrupted study resumes.

The first table gives the test quadratic weighted kappa per seed, its mean with a 95 % t-interval over the seeds,
and the difference from cross-entropy; the second the means of kappa, grade MAE, macro-F1 and accuracy, and the
mean wall time of a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from fit_runs import fit_metrics

from medfusion.compare import RANGES, mean_interval

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
CELLS: dict[str, list[str]] = {
    "cross-entropy (MLP head)": [f"--config={CONFIGS / 'head/mlp.yaml'}", f"--config={CONFIGS / 'loss/ce.yaml'}"],
    "CORAL": [],
    "CORN": [f"--config={CONFIGS / 'head/corn.yaml'}", f"--config={CONFIGS / 'loss/corn.yaml'}"],
}
SHOWN = ("qwk", "grade_mae", "macro_f1", "acc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out_dir", default="runs/graded_heads")
    parser.add_argument("--extra", action="append", default=[], help="a CLI argument for every run")
    args = parser.parse_args()
    out_dir = Path(args.out_dir).resolve()
    config = CONFIGS / "demo_graded.yaml"
    runs = {
        name: [fit_metrics(config, name, cell, seed, out_dir, args.extra) for seed in args.seeds]
        for name, cell in CELLS.items()
    }
    values = {name: {m: [r[f"test/{m}"] for r, _ in results] for m in SHOWN} for name, results in runs.items()}
    baseline = next(iter(values))
    base_mean = mean_interval(pd.Series(values[baseline]["qwk"]))[0]
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"| quadratic kappa | {seeds} | mean [95% CI] | vs. {baseline} |")
    print("|---|" + "---:|" * len(args.seeds) + "---:|---:|")
    for name, metrics in values.items():
        mean, _, low, high = mean_interval(pd.Series(metrics["qwk"]), bounds=RANGES["qwk"])
        delta = "—" if name == baseline else f"{mean - base_mean:+.3f}"
        per_seed = " | ".join(f"{v:.3f}" for v in metrics["qwk"])
        print(f"| {name} | {per_seed} | {mean:.3f} [{low:.3f}, {high:.3f}] | {delta} |")
    print()
    print("| head | " + " | ".join(f"{m} (mean)" for m in SHOWN) + " | s / run |")
    print("|---|" + "---:|" * (len(SHOWN) + 1))
    for name, metrics in values.items():
        means = " | ".join(f"{sum(metrics[m]) / len(metrics[m]):.3f}" for m in SHOWN)
        wall = sum(s for _, s in runs[name]) / len(runs[name])
        print(f"| {name} | {means} | {wall:.0f} |")


if __name__ == "__main__":
    main()
