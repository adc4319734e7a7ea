"""Samples/s the DataModules deliver with 0, 1 and 2 loader workers, against what a training step consumes.

    python benchmarks/dataloader.py [--scenario demo|ham224] [--device cpu|cuda] [--batch_size B]
                                    [--workers 0 1 2] [--batches N] [--repeats R] [--steps S] [--threads T]
                                    [--num_images N]

``--scenario demo`` (default): ``DemoDataModule`` as ``configs/demo.yaml`` sets it up (64 x 64 images, augmentation
on, batch 64), against a training step of the demo model (ResNet-18 + tiny BERT, concat fusion, MLP head,
fusion_dim 256) with its encoders trained and frozen (fusion + head only).

``--scenario ham224``: ``--num_images`` generated 600 x 450 JPEGs (HAM10000's size and quality, textured) read by
``MultimodalDataModule`` at 224 px with augmentation (image only, batch 32), from the files, from the decoded-image
cache (``data.image_cache``) and from streaming shards (``medfusion pack``, read by ``ShardDataModule``; the one-off
cache build and packing are timed apart), against a ResNet-50 training step (timm, random weights, AdamW).
``vs files`` is each source's rate over the files' rate with the same workers.

Delivered: the training loader iterated for ``--batches`` batches per worker count (at most one epoch, so the
workers start once). The wait for the first batch is reported apart as start-up (worker processes, first decodes),
samples/s are over the batches after it. The worker counts are measured round-robin, ``--repeats`` times; medians
are reported. Consumed: samples/s of a training step (forward, loss, backward, AdamW step) on batches loaded
beforehand, from the median step time after ``--warmup`` steps.

Ratio = delivered / consumed: >= 1 means the loader keeps up with the model. Both are measured alone: in training
the loader's workers (or, with 0 workers, the loading itself) share the CPU with the step, so on a machine with
few cores and no GPU the ratios are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from overhead import build_model  # the same demo model (benchmarks/ is on the path when a script runs)
from verify_images import write_jpegs  # HAM10000-like JPEGs

from medfusion.data import DemoDataModule, MultimodalDataModule, ShardDataModule
from medfusion.data.shards import pack, sets_to_pack

Batch = dict[str, Any]
SEED = 0
NUM_BATCHES = 4  # distinct batches loaded up front for the training steps


def delivery(dm: DemoDataModule, workers: int, batches: int) -> tuple[float, float]:
    """``(start-up seconds, samples/s)`` of the training loader with ``workers`` workers: the wait for the first
    batch, then the rate over the next ``batches`` batches."""
    dm.num_workers = workers
    loader = dm.train_dataloader()
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    samples = sum(len(batch["label"]) for batch in islice(iterator, batches))
    seconds = time.perf_counter() - first
    del iterator  # shuts the workers down (not timed)
    return first - start, samples / seconds


class Trainee:
    """A demo model and its optimizer, timing one training step at a time."""

    def __init__(self, dm: DemoDataModule, freeze_encoders: bool, device: torch.device) -> None:
        self.device = device
        self.model = build_model(dm, freeze_encoders).to(device).train()
        self.optimizer = self.model.configure_optimizers()  # AdamW (constant schedule)

    def step_seconds(self, batch: Batch) -> float:
        """Wall time of one step on a loaded batch, its copy to the device included."""
        start = time.perf_counter()
        batch = move_data_to_device(batch, self.device)
        _, loss, _ = self.model.training_objective(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def ham_jpegs(folder: Path, count: int) -> Path:
    """``count`` HAM10000-like JPEGs under ``folder/images`` and their ``samples.csv`` (7 classes)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    paths = write_jpegs(folder / "images", count, progressive=False)
    with open(folder / "samples.csv", "w") as f:
        f.write("image_id,dx\n")
        for i, path in enumerate(paths):
            f.write(f"{path.stem},{'abcdefg'[i % 7]}\n")
    return folder / "samples.csv"


def resnet50_samples_per_s(batch: Batch, device: torch.device, warmup: int, steps: int) -> float:
    """Samples/s of a ResNet-50 training step on ``batch`` (its images and labels)."""
    torch.manual_seed(SEED)
    model = timm.create_model("resnet50", pretrained=False, num_classes=7).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = batch["image"].to(device), batch["label"].to(device)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return len(labels) / statistics.median(times)


def ham224(opts: argparse.Namespace, device: torch.device) -> None:
    """The 224 px scenario: files vs the decoded-image cache, against a ResNet-50 step."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv_path = ham_jpegs(root, opts.num_images)
        options = dict(csv_path=str(csv_path), image_dir=str(root / "images"), label_column="dx", image_size=224,
                       batch_size=opts.batch_size, val_ratio=0.05, test_ratio=0.05, cache=False)  # fmt: skip
        sources = {"files": MultimodalDataModule(**options)}
        sources["image cache"] = MultimodalDataModule(**options, image_cache=str(root / "cache"))
        build_start = time.perf_counter()
        for dm in sources.values():
            dm.setup("fit")
        build = time.perf_counter() - build_start
        pack_start = time.perf_counter()
        files = sources["files"]
        state, report = files.state_dict(), dict(files.data_report)
        pack(sets_to_pack(files), root / "shards", files.image_size, files.max_length, state, report)
        packing = time.perf_counter() - pack_start
        sources["shards"] = ShardDataModule(str(root / "shards"), batch_size=opts.batch_size)
        sources["shards"].setup("fit")
        epoch = len(sources["files"].train_dataloader())
        batches = min(opts.batches, epoch - 1)
        rate: dict[tuple[str, int], list[float]] = {}
        for _ in range(opts.repeats):
            for name, dm in sources.items():
                for workers in opts.workers:
                    rate.setdefault((name, workers), []).append(delivery(dm, workers, batches)[1])
        sources["files"].num_workers = 0
        batch = next(iter(sources["files"].train_dataloader()))
        consumed = resnet50_samples_per_s(batch, device, opts.warmup, opts.steps)
    where = device_name(device)
    print(f"224 px loading vs a ResNet-50 training step: torch {torch.__version__}, model on {where},", end="")
    print(f" {os.cpu_count()} CPUs; {opts.num_images} JPEGs of 600 x 450, batch {opts.batch_size}, augment on")
    print(f"setting up files and image cache (the image check, building the cache once): {build:.1f} s;", end="")
    print(f" packing the shards (medfusion pack): {packing:.1f} s")
    print(f"consumed: ResNet-50 training step, {consumed:,.1f} samples/s")
    print("\n| source | workers | delivered samples/s | vs files | delivered / consumed |")
    print("|---|---:|---:|---:|---:|")
    for (name, workers), rates in rate.items():
        delivered = statistics.median(rates)
        files = statistics.median(rate[("files", workers)])
        print(f"| {name} | {workers} | {delivered:,.0f} | {delivered / files:.2f} | {delivered / consumed:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["demo", "ham224"], default="demo")
    parser.add_argument("--num_images", type=int, default=256, help="ham224: JPEGs to generate")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model trains")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 64 (demo), 32 (ham224)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader run (after the first)")
    parser.add_argument("--repeats", type=int, default=3, help="loader runs per worker count (median reported)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per model setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per model setting")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    opts = parser.parse_args()
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    if min(opts.batches, opts.repeats, opts.steps) < 1 or opts.warmup < 0 or min(opts.workers) < 0:
        parser.error("--batches, --repeats and --steps must be >= 1, --warmup and --workers >= 0")
    device = torch.device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    if opts.scenario == "ham224":
        opts.batch_size = opts.batch_size or 32
        ham224(opts, device)
        return
    opts.batch_size = opts.batch_size or 64

    torch.manual_seed(SEED)
    dm = DemoDataModule(batch_size=opts.batch_size)  # as in configs/demo.yaml: augment on, 64 x 64 images
    dm.setup("fit")
    epoch = len(dm.train_dataloader())
    if epoch < 2:
        parser.error(f"--batch_size {opts.batch_size} leaves {epoch} training batches; need 2")
    batches = min(opts.batches, epoch - 1)  # within one epoch: the workers start once

    load = os.getloadavg()[0]
    # Delivered, round-robin over the worker counts.
    startup: dict[int, list[float]] = {w: [] for w in opts.workers}
    rate: dict[int, list[float]] = {w: [] for w in opts.workers}
    for _ in range(opts.repeats):
        for workers in opts.workers:
            seconds, samples_per_s = delivery(dm, workers, batches)
            startup[workers].append(seconds)
            rate[workers].append(samples_per_s)

    # Consumed, the two settings step by step in turn.
    dm.num_workers = 0
    loaded = list(islice(dm.train_dataloader(), NUM_BATCHES))
    trainees = {"encoders trained": Trainee(dm, False, device), "encoders frozen": Trainee(dm, True, device)}
    step_times: dict[str, list[float]] = {name: [] for name in trainees}
    for i in range(opts.warmup + opts.steps):
        for name, trainee in trainees.items():
            seconds = trainee.step_seconds(loaded[i % NUM_BATCHES])
            if i >= opts.warmup:
                step_times[name].append(seconds)
    consumed = {name: opts.batch_size / statistics.median(times) for name, times in step_times.items()}
    load = max(load, os.getloadavg()[0])

    where = device_name(device)
    print(f"DataModule delivery vs training consumption: torch {torch.__version__}, model on {where};", end="")
    print(f" 1-min load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"DemoDataModule: {dm.image_size} x {dm.image_size} images, augment {dm.augment},", end="")
    print(f" batch {opts.batch_size}; delivered: median of {opts.repeats} runs of {batches} batches after the first")
    print(f"consumed: training step on loaded batches, median of {opts.steps} steps after {opts.warmup} warm-up:")
    for name, samples_per_s in consumed.items():
        ms = statistics.median(step_times[name]) * 1e3
        print(f"  {name}: {samples_per_s:,.0f} samples/s ({ms:.0f} ms/step)")
    print("\n| workers | delivered samples/s | start-up s | delivered / consumed, encoders trained |", end="")
    print(" delivered / consumed, encoders frozen |")
    print("|---:|---:|---:|---:|---:|")
    for workers in opts.workers:
        delivered = statistics.median(rate[workers])
        print(
            f"| {workers} | {delivered:,.0f} | {statistics.median(startup[workers]):.2f} | "
            f"{delivered / consumed['encoders trained']:.2f} | {delivered / consumed['encoders frozen']:.2f} |"
        )


if __name__ == "__main__":
    main()
