"""Set-up time and memory of ``MultimodalDataModule`` for 10k, 100k and 1M rows, first and second run.

    python benchmarks/data_scale.py [--rows 10000 100000 1000000] [--root DIR] [--no_verify]

Data (generated once per size under ``--root``, default a folder in the system's temp dir): a CSV of ``rows`` cases
(id, label of 4 classes, age, sex, site, a 8-20 word report as ``text_column``) and one tiny PNG per case under
``images/dNNN/`` (10,000 per folder), hard links to a few real 8 x 8 PNG files so that a million of them cost no
disk: every path is its own file to index, resolve, stat and verify. The module reads image + text + tabular.

Each measurement is a fresh process (``--child``), so imports are paid apart and the peak RSS is the set-up's own:
  - read: ``MultimodalDataModule(...)`` (CSV, image index, texts, labels, splits, tabular statistics, tokenizer);
  - verify: the image check in ``setup`` (all rows; worker processes for many files);
  - datasets: the rest of ``setup("fit")`` (tabular encoding, counting texts over ``max_length``);
  - RSS: peak resident memory above the process after imports (the "empty" process), per row.
"first" runs with an empty cache directory, "second" again with the one the first filled (image verification is
then skipped for unchanged files). The reference for the ratios is the smallest size's first run, measured in the
same invocation: ``s/row vs ref`` > 1 means set-up grows faster than linearly.

A second table (unless ``--no_ddp``) times a first run's set-up inside ``Trainer.fit`` on one CPU process and on
two DDP CPU processes (Lightning starts the second after the first built the datamodule), from the command's
start until every rank has its datasets: the reference is the one-process run of the same size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["lesion", "irregular", "border", "pigment", "network", "asymmetric", "nodule", "scaly", "crust", "ulcer",
         "dermoscopy", "shows", "regular", "blue", "white", "veil", "dots", "globules", "streaks"]  # fmt: skip
PER_FOLDER = 10_000
LINKS_PER_FILE = 50_000  # below ext4's limit of 65,000 hard links per file


def generate(root: Path, rows: int) -> Path:
    """The data of ``rows`` cases under ``root/<rows>`` (reused when complete)."""
    import numpy as np
    from PIL import Image

    out = root / str(rows)
    if (out / "done").is_file():
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    sources = []
    for k in range(rows // LINKS_PER_FILE + 1):
        source = out / f"source{k}.png"
        Image.fromarray(np.full((8, 8, 3), k % 256, np.uint8)).save(source)
        sources.append(source)
    rng = random.Random(0)
    with open(out / "samples.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "label", "age", "sex", "site", "report"])
        for i in range(rows):
            folder = f"d{i // PER_FOLDER:03d}"
            if i % PER_FOLDER == 0:
                (out / "images" / folder).mkdir(exist_ok=True)
            target = out / "images" / folder / f"case_{i:07d}.png"
            if not target.exists():
                os.link(sources[i // LINKS_PER_FILE], target)
            report = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20)))
            writer.writerow([f"{folder}/case_{i:07d}", ["nv", "mel", "bkl", "bcc"][i % 4], 20 + i % 70, "MF"[i % 2],
                             ["back", "face", "trunk"][i % 3], report])  # fmt: skip
    (out / "done").write_text("")
    return out


def rss_mb() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def datamodule(data: Path, cache_dir: Path, verify: bool):
    """The module under test: image + text + tabular from the generated CSV."""
    from medfusion.data import MultimodalDataModule

    return MultimodalDataModule(
        csv_path=str(data / "samples.csv"),
        image_dir=str(data / "images"),
        text_column="report",
        numeric_columns=["age"],
        categorical_columns=["sex", "site"],
        image_size=32,
        verify_images=verify,
        cache_dir=str(cache_dir),
    )


def child(data: Path, cache_dir: Path, verify: bool) -> None:
    """One set-up, timed by phase, printed as JSON."""
    empty = rss_mb()
    start = time.perf_counter()
    dm = datamodule(data, cache_dir, verify)
    read = time.perf_counter()
    dm.setup("validate")  # the image check (and the val set); the train set is built below
    verified = time.perf_counter()
    dm.setup("fit")
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"read": read - start, "verify": verified - read, "datasets": done - verified,
                      "empty_mb": empty, "peak_mb": peak, "rows": len(dm._table.ids)}))  # fmt: skip


def trainer_child(data: Path, cache_dir: Path, verify: bool, devices: int) -> None:
    """The set-up as a ``fit`` sees it, on ``devices`` CPU processes (DDP for 2): seconds from the parent's clock
    until every rank has its datasets (Lightning's ``on_fit_start``), and the largest peak RSS of a rank."""
    import lightning as L
    import torch

    empty = rss_mb()
    dm = datamodule(data, cache_dir, verify)

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def on_fit_start(self) -> None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            mine = {"seconds": time.time() - float(os.environ["DATA_SCALE_T0"]), "above_mb": peak - empty}
            everyone = [mine]
            if self.trainer.world_size > 1:
                everyone = [None] * self.trainer.world_size
                torch.distributed.all_gather_object(everyone, mine)
            if self.global_rank == 0:
                print(json.dumps({k: max(r[k] for r in everyone) for k in mine}), flush=True)
            raise SystemExit(0)  # the set-up is what is measured; no step is needed

        def training_step(self, batch: dict, index: int) -> torch.Tensor:
            return self.layer(batch["label"].float()[:, None]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    strategy = "ddp" if devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, max_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(cache_dir))  # fmt: skip
    trainer.fit(Probe(), datamodule=dm)


def fit_measure(data: Path, cache_dir: Path, verify: bool, devices: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--trainer_child", str(data), "--cache_dir", str(cache_dir)]
    command += ["--devices", str(devices)] + ([] if verify else ["--no_verify"])
    env = {**os.environ, "MEDFUSION_PROGRESS": "off", "DATA_SCALE_T0": str(time.time())}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"set-up under a Trainer failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure(data: Path, cache_dir: Path, verify: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(data), "--cache_dir", str(cache_dir)]
    command += [] if verify else ["--no_verify"]
    env = {**os.environ, "MEDFUSION_PROGRESS": "off"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        sys.exit(f"set-up failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "medfusion-data-scale")
    parser.add_argument("--no_verify", action="store_true", help="leave out the image check")
    parser.add_argument("--no_ddp", action="store_true", help="leave out the 1-process vs 2-DDP-process table")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trainer_child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(opts.child, opts.cache_dir, not opts.no_verify)
        return
    if opts.trainer_child:
        trainer_child(opts.trainer_child, opts.cache_dir, not opts.no_verify, opts.devices)
        return
    results, fits = [], []
    for rows in sorted(opts.rows):
        start = time.perf_counter()
        data = generate(opts.root, rows)
        print(f"data for {rows:,} rows ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        with tempfile.TemporaryDirectory() as cache_dir:
            for run in ("first", "second"):
                results.append((rows, run, measure(data, Path(cache_dir), not opts.no_verify)))
        if not opts.no_ddp:
            for devices in (1, 2):
                with tempfile.TemporaryDirectory() as cache_dir:  # first runs: nothing cached
                    fits.append((rows, devices, fit_measure(data, Path(cache_dir), not opts.no_verify, devices)))
    print(f"MultimodalDataModule set-up (image + text + tabular), {os.cpu_count()} CPUs, verify {not opts.no_verify}")
    print("\n| rows | run | read s | verify s | datasets s | set-up s | s/row vs ref |", end="")
    print(" peak RSS above empty MB | bytes/row |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    ref = next(r for r in results if r[1] == "first")
    ref_per_row = (ref[2]["read"] + ref[2]["verify"] + ref[2]["datasets"]) / ref[0]
    for rows, run, m in results:
        total = m["read"] + m["verify"] + m["datasets"]
        above = m["peak_mb"] - m["empty_mb"]
        print(f"| {rows:,} | {run} | {m['read']:.1f} | {m['verify']:.1f} | {m['datasets']:.1f} | {total:.1f} | "
              f"{total / rows / ref_per_row:.2f} | {above:,.0f} | {above * 2**20 / rows:,.0f} |")  # fmt: skip

    if fits:
        print("\nFirst run under a Trainer (seconds from the command's start until every rank has its datasets,")
        print("imports and process start included): one process vs 2 DDP CPU processes, whose second rank loads")
        print("rank zero's set-up cache entry and gets its image check's verdict.\n")
        print("| rows | 1 process s | 2 DDP processes s | DDP / 1 | peak RSS above empty, largest rank, bytes/row |")
        print("|---:|---:|---:|---:|---:|")
        for rows in sorted(opts.rows):
            one, two = (next(m for r, d, m in fits if r == rows and d == n) for n in (1, 2))
            print(f"| {rows:,} | {one['seconds']:.1f} | {two['seconds']:.1f} | {two['seconds'] / one['seconds']:.2f} |"
                  f" {two['above_mb'] * 2**20 / rows:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
