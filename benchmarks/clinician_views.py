"""Looking as a clinician looks: each strategy against its baseline on its demo, test macro-F1 over seeds.

    python benchmarks/clinician_views.py [--study global_local|slices|studies] [--seeds 0 1 2]
                                         [--out_dir runs/clinician_views] [--extra ARG ...]

``global_local`` (``configs/demo_global_local.yaml``): the whole image at 64 px alone (the baseline), the lesion
crop alone, both (concat fusion), both with the uncertainty-gated dual expert (``model.dual_expert: local``;
reported against the single head), and without boxes: the file at 256 px, the model's 64 px global view picking its
own crop by its class-activation map (``model.saliency_crop``). ``slices`` (``configs/demo_25d.yaml``): the named
slice alone, then it and two neighbours on each side as channels, as a sequence with attention pooling, and with a
Transformer across the slices. ``studies`` (``configs/demo_study.yaml``): each study's first image alone, then all
its images pooled by mean, max and gated attention. Each cell is one ``medfusion fit`` with its seed (weights,
order; the data and its split are the same for every cell), tested on the best checkpoint by validation macro-F1.
Finished cells are read back from their ``metrics.json``, so an interrupted study resumes. ``--extra`` passes a CLI
argument to every run (e.g. ``--extra=--trainer.max_epochs=3``).

The table gives each cell's per-seed scores, their mean with a 95 % t-interval over the seeds, the difference
from the study's baseline, and the mean wall time of a run (what a strategy costs, measured in the same study).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from fit_runs import fit_metrics

from medfusion.compare import mean_interval

ROOT = Path(__file__).resolve().parent.parent
SINGLE_IMAGE = ["--model=medfusion.models.ImageClassifier"]
STUDIES: dict[str, tuple[str, dict[str, list[str]]]] = {
    "global_local": (
        "demo_global_local.yaml",
        {
            "global view (64 px)": [*SINGLE_IMAGE, "--data.modalities=[image]"],
            "lesion crop": [*SINGLE_IMAGE, "--data.modalities=[local]"],
            "global + local": [],
            "global + local, dual expert": ["--model.dual_expert=local"],
            "global + saliency crop (no boxes)": [
                "--data.crops={}",
                "--data.modalities=[image]",
                "--data.image_size=256",
                "--model.saliency_crop={name: local, source: image}",
            ],
        },
    ),
    "slices": (
        "demo_25d.yaml",
        {
            "centre slice": ["--data.slices={}"],
            "2.5D, channels": ["--model.slice_mode=channels"],
            "2.5D, sequence + attention pooling": ["--model.slice_pooling=attention"],
            "2.5D, sequence + Transformer": [],
        },
    ),
    "studies": (
        "demo_study.yaml",
        {
            "first image": ["--data.study_max_images=1"],
            "study, mean pooling": ["--model.study_pooling=mean"],
            "study, max pooling": ["--model.study_pooling=max"],
            "study, attention pooling": [],
        },
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=sorted(STUDIES), default="global_local")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out_dir", default="runs/clinician_views")
    parser.add_argument("--extra", action="append", default=[], help="a CLI argument for every run")
    args = parser.parse_args()
    config_name, cells = STUDIES[args.study]
    out_dir = Path(args.out_dir).resolve() / args.study
    config = ROOT / "configs" / config_name
    runs = {
        name: [fit_metrics(config, name, cell, seed, out_dir, args.extra) for seed in args.seeds]
        for name, cell in cells.items()
    }
    scores = {name: [metrics["test/macro_f1"] for metrics, _ in values] for name, values in runs.items()}
    baseline = next(iter(scores))
    base_mean = mean_interval(pd.Series(scores[baseline]))[0]
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"| {args.study} | {seeds} | mean [95% CI] | vs. {baseline} | s / run |")
    print("|---|" + "---:|" * len(args.seeds) + "---:|---:|---:|")
    for name, values in scores.items():
        mean, _, low, high = mean_interval(pd.Series(values))
        delta = "—" if name == baseline else f"{mean - base_mean:+.3f}"
        per_seed = " | ".join(f"{v:.3f}" for v in values)
        wall = sum(s for _, s in runs[name]) / len(runs[name])
        print(f"| {name} | {per_seed} | {mean:.3f} [{low:.3f}, {high:.3f}] | {delta} | {wall:.0f} |")


if __name__ == "__main__":
    main()
