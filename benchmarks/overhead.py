"""Time per training step of the demo model under the Lightning Trainer, relative to a hand-written PyTorch loop.

    python benchmarks/overhead.py [--device cpu|cuda] [--batch_size B] [--steps N] [--warmup W] [--rounds R]
                                  [--threads T] [--clock wall|cpu]

The model is built as ``configs/demo.yaml`` builds it: ``MultimodalClassifier`` with a ResNet-18 image encoder,
the tiny BERT text encoder, concat fusion and an MLP head (fusion_dim 256), AdamW from the model's own
``configure_optimizers`` (``scheduler="constant"`` on both sides). The data are ``DemoDataModule`` training batches
(no augmentation): 12 are loaded once, onto the device, and both loops cycle through that same list in the same
order, so data loading is left out and only the loop differs:

* plain: ``model.training_objective(batch)`` (forward + loss), ``backward``, ``optimizer.step``, ``zero_grad``;
* Lightning: ``Trainer.fit`` (no logger, checkpointing, progress bar, summary or validation), i.e. the model's
  ``training_step`` with its per-step ``self.log`` calls and ``train_acc`` update, plus Lightning's hooks.

A step's time is the interval between consecutive step starts (Lightning: ``on_train_batch_start``), so everything
between two steps counts. Each run is a fresh model with the same initial weights (seed 0) and dropout seed; its
first ``--warmup`` intervals are dropped. Runs alternate plain / Lightning for ``--rounds`` rounds (order swapped
every round); the table gives the median over all timed steps, and the ratio of each round's medians. On CUDA the
device is synchronised at each step start (an upper bound on the overhead: no CPU/GPU overlap hides it). On a
shared, busy CPU machine wall time swings with the other load; ``--clock cpu --threads 1`` times the process's
CPU time instead, which being descheduled does not inflate.

Three settings: encoders trained (the issue #7 target: Lightning / plain <= 1.05); ``freeze_encoders=True`` (only
fusion + head are trained: a much shorter step in which a fixed per-step cost weighs more; informational); and the
head alone on constant features (``--steps`` x 10 steps per run), a near-free step whose Lightning - plain difference
is Lightning's fixed per-step cost in ms (loop, hooks, the ``training_step``'s ``self.log`` calls and ``train_acc``),
which is printed as a share of the trained-encoder step too: an estimate that a busy machine disturbs much less than
the ratio of two long steps.
As a check that both loops do the same work, their step losses are compared (same weights, data and dropout).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice, pairwise
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader, Dataset

from medfusion.data import DemoDataModule
from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import ConcatFusion
from medfusion.heads import MLPHead
from medfusion.models import MultimodalClassifier

Batch = dict[str, Any]
Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}
SEED = 0
NUM_BATCHES = 12  # distinct batches loaded up front and cycled through


class CycledBatches(Dataset):
    """``length`` items cycling through a list of ready batches (read by a ``DataLoader`` with ``batch_size=None``)."""

    def __init__(self, batches: list[Batch], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Batch:
        return self.batches[index % len(self.batches)]


def as_is(batch: Batch) -> Batch:
    """The loader's conversion function: the batches are ready."""
    return batch


def batch_loader(batches: list[Batch], length: int) -> DataLoader:
    """The loader both loops read: ``length`` batches from the list, in order, in the main process."""
    return DataLoader(CycledBatches(batches, length), batch_size=None, shuffle=False, collate_fn=as_is)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return move_data_to_device(batch, device)


class HeadOnly(MultimodalClassifier):
    """The demo model whose training objective is its head on constant features: a step that costs next to nothing,
    so Lightning's fixed per-step cost (loop, hooks, the ``training_step``'s logging and metric) is all that shows."""

    def training_objective(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.head(torch.ones(len(batch["label"]), self.fusion.out_dim, device=self.device))
        return logits, self.criterion(logits, batch["label"]), {}


# setting -> (model class, freeze_encoders, timed steps per run as a multiple of --steps)
SETTINGS: dict[str, tuple[type[MultimodalClassifier], bool, int]] = {
    "encoders trained": (MultimodalClassifier, False, 1),
    "encoders frozen": (MultimodalClassifier, True, 1),
    "head only, constant input": (HeadOnly, True, 10),
}


def build_model(
    dm: DemoDataModule, freeze_encoders: bool, cls: type[MultimodalClassifier] = MultimodalClassifier
) -> MultimodalClassifier:
    """The demo model (configs/demo.yaml), seeded so that every instance starts from the same weights."""
    torch.manual_seed(SEED)
    return cls(
        image_encoder=partial(ImageEncoder, model_name="resnet18"),
        text_encoder=partial(TextEncoder, model_name="tiny"),
        fusion=ConcatFusion,
        fusion_dim=256,
        head=MLPHead,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        class_counts=dm.class_counts,
        vocab_size=dm.vocab_size,
        lr=1e-3,
        scheduler="constant",
        freeze_encoders=freeze_encoders,
    )


@dataclass
class Run:
    """One training run: the clock at each step start, and each step's loss (a tensor, not synchronised)."""

    starts: list[float] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)

    def intervals(self, warmup: int) -> list[float]:
        """Seconds between consecutive step starts, the first ``warmup`` dropped."""
        return [b - a for a, b in pairwise(self.starts)][warmup:]


def plain_run(model: MultimodalClassifier, batches: list[Batch], steps: int, device: torch.device, clock: Clock) -> Run:
    """Train ``steps`` steps with a hand-written loop."""
    model.to(device).train()
    optimizer = model.configure_optimizers()  # AdamW, the model's parameter groups (constant schedule)
    run = Run()
    for step, batch in enumerate(batch_loader(batches, steps)):
        if step == 0:
            torch.manual_seed(SEED)  # dropout, as in the Lightning run
        synchronize(device)
        run.starts.append(clock())
        _, loss, _ = model.training_objective(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run.losses.append(loss.detach())
    synchronize(device)
    return run


class StepClock(L.Callback):
    """Records a :class:`Run` of the Trainer's steps; seeds dropout as the plain loop does."""

    def __init__(self, device: torch.device, clock: Clock) -> None:
        self.device, self.clock = device, clock
        self.run = Run()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == 0:
            torch.manual_seed(SEED)  # dropout, as in the plain loop
        synchronize(self.device)
        self.run.starts.append(self.clock())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.run.losses.append(outputs["loss"].detach())


def lightning_run(
    model: MultimodalClassifier, batches: list[Batch], steps: int, device: torch.device, clock: Clock
) -> Run:
    """Train ``steps`` steps with ``Trainer.fit``."""
    recorder = StepClock(device, clock)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[recorder],
    )
    trainer.fit(model, train_dataloaders=batch_loader(batches, steps))
    synchronize(device)
    return recorder.run


def measure(
    dm: DemoDataModule, batches: list[Batch], setting: str, opts: argparse.Namespace, device: torch.device
) -> tuple[list[float], list[float], list[float], float]:
    """``(plain step seconds, Lightning step seconds, per-round ratios, largest relative loss difference)``."""
    cls, freeze, multiple = SETTINGS[setting]
    steps = opts.warmup + opts.steps * multiple + 1  # N + 1 starts give N intervals
    plain: list[float] = []
    light: list[float] = []
    ratios: list[float] = []
    difference = 0.0
    for round_ in range(opts.rounds):
        runs: dict[str, Run] = {}
        for name in ("plain", "lightning") if round_ % 2 == 0 else ("lightning", "plain"):
            run = plain_run if name == "plain" else lightning_run
            runs[name] = run(build_model(dm, freeze, cls), batches, steps, device, CLOCKS[opts.clock])
        times = {name: run.intervals(opts.warmup) for name, run in runs.items()}
        plain += times["plain"]
        light += times["lightning"]
        ratios.append(statistics.median(times["lightning"]) / statistics.median(times["plain"]))
        losses = {name: torch.stack(run.losses).float().cpu() for name, run in runs.items()}
        gap = (losses["lightning"] - losses["plain"]).abs() / losses["plain"].abs()
        difference = max(difference, gap.max().item())
    return plain, light, ratios, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (median over all runs)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=5, help="plain / Lightning run pairs per setting")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=list(CLOCKS), default="wall", help="cpu: process CPU time (steadier on a busy machine)"
    )
    opts = parser.parse_args()
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    if opts.device == "cuda" and opts.clock == "cpu":
        parser.error("--clock cpu times the CPU only: use --clock wall with --device cuda")
    if min(opts.steps, opts.rounds) < 1 or opts.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    device = torch.device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # per-fit banners
    quiet = ("does not have many workers", "You defined a `validation_step`", "LeafSpec", "tensor cores", "eval mode")
    for message in quiet:
        warnings.filterwarnings("ignore", f".*{message}")

    torch.manual_seed(SEED)
    dm = DemoDataModule(batch_size=opts.batch_size, num_workers=0, augment=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    if len(loader) < NUM_BATCHES:
        parser.error(f"--batch_size {opts.batch_size} leaves {len(loader)} training batches, fewer than {NUM_BATCHES}")
    batches = [to_device(b, device) for b in islice(loader, NUM_BATCHES)]

    # One-off process warm-up (kernel selection, allocator): the first steps of a process are much slower.
    for cls, freeze, _ in SETTINGS.values():
        plain_run(build_model(dm, freeze, cls), batches, 3, device, time.perf_counter)

    load = os.getloadavg()[0]
    results = {setting: measure(dm, batches, setting, opts, device) for setting in SETTINGS}
    load = max(load, os.getloadavg()[0])

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"Training step, Lightning Trainer vs plain PyTorch loop: torch {torch.__version__}, lightning", end="")
    print(f" {L.__version__} on {where}")
    print("MultimodalClassifier (resnet18 + tiny BERT, concat, MLP head, fusion_dim 256), demo data", end="")
    print(f" {tuple(batches[0]['image'].shape[-2:])} images, batch {opts.batch_size}, AdamW")
    print(f"median over {opts.rounds} rounds x {opts.steps} steps per loop (head only x 10;", end="")
    print(f" {opts.warmup} warm-up steps per run), {opts.clock} clock; 1-min load average {load:.1f}", end="")
    print(f" on {os.cpu_count()} CPUs\n")
    print("| setting | plain ms/step | Lightning ms/step | Lightning / plain | per round | target |")
    print("|---|---:|---:|---:|---|---|")
    for name, (plain, light, ratios, _) in results.items():
        plain_ms, light_ms = statistics.median(plain) * 1e3, statistics.median(light) * 1e3
        target = "<= 1.05" if name == "encoders trained" else "none (informational)"
        print(
            f"| {name} | {plain_ms:.1f} | {light_ms:.1f} | {light_ms / plain_ms:.3f} | "
            f"{', '.join(f'{r:.3f}' for r in ratios)} | {target} |"
        )
    fixed = statistics.median(results["head only, constant input"][1]) - statistics.median(
        results["head only, constant input"][0]
    )
    trained = statistics.median(results["encoders trained"][0])
    print(f"\nLightning's fixed cost per step (head-only row, Lightning - plain): {fixed * 1e3:.2f} ms", end="")
    print(f"\n  = {fixed / trained:.1%} of a plain step with encoders trained (ratio {1 + fixed / trained:.3f})")
    print("same work check, largest relative difference between the two loops' step losses: ", end="")
    print(", ".join(f"{name} {difference:.1e}" for name, (*_, difference) in results.items()))


if __name__ == "__main__":
    main()
