"""Wall time of a ``medfusion compare`` grid on cached features against the pure training compute of its cells, and
against training its cells one at a time.

    python benchmarks/compare_grid.py [--fusions F ...] [--heads H ...] [--seeds S ...] [--workers W] [--quick]

The grid is ``configs/compare/demo.yaml``'s (8 fusions x 4 heads x 3 seeds, frozen cached encoders, 15 epochs) or
the one the options name. First a warm-up grid computes the feature cache of every seed (not timed: each cell after
it reads the cache). Then, into fresh directories:

* the grid with ``--workers`` cells at a time (each in its own process, the cores shared out);
* the same grid one cell at a time (``workers 1``): the reference the first must equal, cell by cell, to 1e-4 in
  every test metric (the same seeds; the table prints the largest difference);
* the pure training compute: for each configuration, a plain PyTorch loop (forward, loss, backward, AdamW step; no
  Lightning, logging, validation or test) over the cell's cached training batches for as many steps as the cell
  trained, times its seeds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from medfusion.cli import configured
from medfusion.compare import build_cells, cell_args, make_axes, run_grid
from medfusion.models import ClassifierModule
from medfusion.models.feature_cache import serve_cached_features
from medfusion.models.optim import adamw

ROOT = Path(__file__).resolve().parents[1]
GRID = yaml.safe_load((ROOT / "configs" / "compare" / "demo.yaml").read_text())
METRICS = ["macro_f1", "balanced_acc", "macro_auroc", "acc", "ece"]


def pure_compute(cell, base: list[str], overrides: list[str], epochs: int, out: Path) -> tuple[float, int]:
    """Seconds of ``epochs`` epochs of plain training steps of ``cell``'s model on its cached training batches, and
    the steps per epoch."""
    cli = configured(ClassifierModule, cell_args(cell, base, overrides, out / cell.name))
    model, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("fit")
    model.setup("fit")
    data.use_datasets(serve_cached_features(model, data))
    batches = list(data.train_dataloader())
    hp = model.hparams
    optimizer = adamw(model, [], encoder_lr=hp.lr, lr=hp.lr, weight_decay=hp.weight_decay)
    model.train()  # the frozen encoders stay frozen and in eval mode
    torch.set_flush_denormal(True)  # as a fit on the CPU does
    start = time.perf_counter()
    for step in range(epochs * len(batches)):
        _, loss, _ = model.training_objective(batches[step % len(batches)])
        loss = loss + sum(model.extra_losses().values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", nargs="+", default=GRID["fusions"])
    parser.add_argument("--heads", nargs="+", default=GRID["heads"])
    parser.add_argument("--seeds", nargs="+", type=int, default=GRID["seeds"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 fusions x 2 heads x 2 seeds")
    args = parser.parse_args()
    if args.quick:
        args.fusions, args.heads, args.seeds = ["concat", "gated"], ["mlp", "kan"], [0, 1]
    os.chdir(ROOT)
    base, overrides = GRID["base"], GRID["overrides"]
    grid = {"base": base, "fusions": args.fusions, "heads": args.heads, "seeds": args.seeds, "overrides": overrides}
    with tempfile.TemporaryDirectory(prefix="medfusion-grid-bench-") as tmp:
        out = Path(tmp)
        run_grid(**{**grid, "fusions": args.fusions[:1], "heads": args.heads[:1]}, out_dir=out / "warm")
        timings = {}
        for name, workers in ((f"{args.workers} cells at a time", args.workers), ("one cell at a time", 1)):
            start = time.perf_counter()
            run_grid(**grid, out_dir=out / name.replace(" ", "_"), workers=workers)
            timings[name] = time.perf_counter() - start
        parallel = pd.read_csv(out / f"{args.workers}_cells_at_a_time" / "results.csv").set_index("name")
        sequential = pd.read_csv(out / "one_cell_at_a_time" / "results.csv").set_index("name")
        largest = (parallel[METRICS] - sequential.loc[parallel.index, METRICS]).abs().max().max()
        cells = build_cells(make_axes({"fusion": args.fusions, "head": args.heads, "loss": None}, None), args.seeds)
        compute = 0.0
        for cell in cells[:: len(args.seeds)]:  # one per configuration; every seed trains as many steps
            epochs = int(sequential.loc[cell.name, "epochs"])  # trainer.current_epoch after fit: epochs trained
            seconds, steps_per_epoch = pure_compute(cell, base, overrides, epochs, out / "pure")
            compute += len(args.seeds) * seconds
    shape = f"{len(args.fusions)} fusions x {len(args.heads)} heads x {len(args.seeds)} seeds"
    print(f"\n{len(cells)} cells ({shape}), {steps_per_epoch} steps per epoch, {os.cpu_count()} cores")
    print("| run | wall s | / pure training compute |\n|---|---|---|")
    print(f"| pure training compute (sum over cells) | {compute:.1f} | 1.00 |")
    for name, seconds in timings.items():
        print(f"| grid, {name} | {seconds:.1f} | {seconds / compute:.2f} |")
    ratio = timings["one cell at a time"] / timings[f"{args.workers} cells at a time"]
    print(f"\n{args.workers} cells at a time: {ratio:.2f}x faster than one at a time; largest difference of a test "
          f"metric between the two, cell by cell: {largest:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
