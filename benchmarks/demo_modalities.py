"""Which modalities the demo needs: test macro-F1 of image+text+tabular against every pair, over seeds.

    python benchmarks/demo_modalities.py [--config configs/demo_tabular.yaml] [--seeds 0 1 2]
                                         [--out_dir runs/modalities] [--baselines] [--extra ARG ...]

Each cell is one ``medfusion fit --config CONFIG --data.modalities [...]`` run with its seed
(``seed_everything``: weights, order, augmentation; the demo data, its split and the Trainer are the same for every
cell), tested on the best checkpoint by validation macro-F1 (``test_after_fit``); ``--baselines`` adds the
single-modality configs (``demo_image.yaml``, ``demo_text.yaml``, ``demo_tabular_only.yaml``). Finished cells are
read back from their ``metrics.json``, so an interrupted study resumes. ``--extra`` passes further CLI arguments to
every run (e.g. ``--extra=--trainer.max_epochs=4``).

The table gives each cell's mean and standard deviation over the seeds and its difference from the full model; the
demo's best possible accuracies are 1.000 with all three modalities, 0.750 with any two and 0.417 with one (see
``medfusion.data.demo``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL = ("image", "text", "tabular")
PAIRS = (("image", "text"), ("image", "tabular"), ("text", "tabular"))
SINGLE = {("image",): "demo_image.yaml", ("text",): "demo_text.yaml", ("tabular",): "demo_tabular_only.yaml"}


def run_cell(config: Path, modalities: tuple[str, ...], seed: int, out_dir: Path, extra: list[str]) -> dict[str, float]:
    """The test metrics of one (modalities, seed) cell: read from its ``metrics.json``, else trained first (the
    single-modality baselines with their own demo configs)."""
    name = f"{'+'.join(modalities)}-s{seed}"
    metrics = out_dir / name / "version_0" / "metrics.json"
    if not metrics.is_file():
        if modalities in SINGLE:
            config = ROOT / "configs" / SINGLE[modalities]
        command = [
            sys.executable,
            "-m",
            "medfusion",
            "fit",
            f"--config={config}",
            f"--seed_everything={seed}",
            f"--trainer.logger.init_args.save_dir={out_dir}",
            f"--trainer.logger.init_args.name={name}",
            "--trainer.enable_progress_bar=false",
            *extra,
        ]
        if modalities not in SINGLE:
            command.append(f"--data.modalities=[{', '.join(modalities)}]")
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return json.loads(metrics.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo_tabular.yaml"), help="image+text+tabular")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out_dir", default="runs/modalities")
    parser.add_argument("--baselines", action="store_true", help="add the single-modality models")
    parser.add_argument("--extra", action="append", default=[], help="a CLI argument for every run")
    args = parser.parse_args()
    out_dir = Path(args.out_dir).resolve()
    cells = [FULL, *PAIRS, *(SINGLE if args.baselines else ())]
    scores = {
        cell: [run_cell(Path(args.config), cell, seed, out_dir, args.extra)["test/macro_f1"] for seed in args.seeds]
        for cell in cells
    }
    full = statistics.mean(scores[FULL])
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"| modalities | {seeds} | mean ± std | vs. all three |")
    print("|---|" + "---|" * len(args.seeds) + "---|---|")
    for cell, values in scores.items():
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = " | ".join(f"{v:.3f}" for v in values)
        delta = "—" if cell == FULL else f"{mean - full:+.3f}"
        print(f"| {' + '.join(cell)} | {per_seed} | {mean:.3f} ± {std:.3f} | {delta} |")


if __name__ == "__main__":
    main()
