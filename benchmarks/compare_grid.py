"""Wall time of a ``medfusion compare`` grid on cached features against the pure training compute of its cells, and
against training its cells one at a time.

    python benchmarks/compare_grid.py [--fusions F ...] [--heads H ...] [--seeds S ...] [--workers W] [--quick]
        [--keep DIR]

The grid is ``configs/compare/demo.yaml``'s (8 fusions x 4 heads x 3 seeds, frozen cached encoders, 15 epochs) or
the one the options name. First a warm-up grid (each fusion and seed for one epoch) computes every feature cache the
grid reads (not timed: each cell after it reads the caches). Then, into fresh directories:

* the grid with ``--workers`` cells at a time (each in its own process, the cores shared out: ``cores // workers``
  threads each);
* the same grid one cell at a time with as many threads per cell: the reference it must equal, cell by cell, to 1e-4
  in every test metric (the same seeds, the same sums);
* the same grid one cell at a time with every core (the fastest way to run it without workers). Its results may
  differ: a matrix product or reduction split over another number of threads adds in another order, and some
  trainings (bilinear, attention fusions) amplify those last-digit differences over 300 steps;
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
    parser.add_argument("--keep", type=Path, help="write the grids here (kept) instead of a temporary directory")
    args = parser.parse_args()
    keep = args.keep.resolve() if args.keep else None  # before the chdir below
    if args.quick:
        args.fusions, args.heads, args.seeds = ["concat", "gated"], ["mlp", "kan"], [0, 1]
    os.chdir(ROOT)
    base, overrides = GRID["base"], GRID["overrides"]
    grid = {"base": base, "fusions": args.fusions, "heads": args.heads, "seeds": args.seeds, "overrides": overrides}
    with tempfile.TemporaryDirectory(prefix="medfusion-grid-bench-") as tmp:
        out = keep or Path(tmp)
        # every fusion once per seed, for one epoch: the caches of every kind (pooled, tokens, levels) before timing
        warm_overrides = [*overrides, "--trainer.max_epochs=1"]
        run_grid(**{**grid, "heads": args.heads[:1], "overrides": warm_overrides}, out_dir=out / "warm")
        threads = max(1, (os.cpu_count() or 1) // args.workers)  # what each worker of the parallel grid gets
        runs = {  # name: (workers, torch threads of this process while it trains the cells itself)
            f"{args.workers} cells at a time, {threads} thread(s) each": (args.workers, torch.get_num_threads()),
            f"one cell at a time, {threads} thread(s)": (1, threads),
            f"one cell at a time, {torch.get_num_threads()} threads": (1, torch.get_num_threads()),
        }
        timings, results = {}, {}
        for name, (workers, run_threads) in runs.items():
            own = torch.get_num_threads()
            torch.set_num_threads(run_threads)
            start = time.perf_counter()
            run_grid(**grid, out_dir=out / f"grid{len(timings)}", workers=workers)
            timings[name] = time.perf_counter() - start
            torch.set_num_threads(own)
            results[name] = pd.read_csv(out / f"grid{len(results)}" / "results.csv").set_index("name")
        parallel, same_threads, all_cores = results.values()
        cells = build_cells(make_axes({"fusion": args.fusions, "head": args.heads, "loss": None}, None), args.seeds)
        compute = 0.0
        for cell in cells[:: len(args.seeds)]:  # one per configuration; every seed trains as many steps
            epochs = int(all_cores.loc[cell.name, "epochs"])  # trainer.current_epoch after fit: epochs trained
            seconds, steps_per_epoch = pure_compute(cell, base, overrides, epochs, out / "pure")
            compute += len(args.seeds) * seconds
    shape = f"{len(args.fusions)} fusions x {len(args.heads)} heads x {len(args.seeds)} seeds"
    print(f"\n{len(cells)} cells ({shape}), {steps_per_epoch} steps per epoch, {os.cpu_count()} cores")
    print("| run | wall s | / pure training compute |\n|---|---|---|")
    print(f"| pure training compute (sum over cells, {torch.get_num_threads()} threads) | {compute:.1f} | 1.00 |")
    for name, seconds in timings.items():
        print(f"| grid, {name} | {seconds:.1f} | {seconds / compute:.2f} |")
    names = list(runs)
    speedup = min(timings[names[1]], timings[names[2]]) / timings[names[0]]
    print(f"\n{args.workers} cells at a time: {speedup:.2f}x faster than the faster one-at-a-time grid")
    for name, other in ((names[1], same_threads), (names[2], all_cores)):
        difference = (parallel[METRICS] - other.loc[parallel.index, METRICS]).abs().max(axis=1)
        differing = int((difference > 1e-4).sum())
        print(f"test metrics against {name}: largest difference {difference.max():.2e}, {differing} of "
              f"{len(parallel)} cells differ by more than 1e-4")  # fmt: skip


if __name__ == "__main__":
    main()
