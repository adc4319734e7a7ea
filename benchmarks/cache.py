"""Epoch time of a frozen-encoder fusion run with and without the feature cache, on the demo data.

    python benchmarks/cache.py [--fusions concat cross_attention] [--epochs 3] [--num_samples 2000] [--workers 2]

Each fusion trains the demo model (ResNet-18 + tiny BERT with mean pooling, frozen; MLP head) for ``--epochs``
epochs three times: without the cache (images decoded and both encoders run every epoch), with a cold cache (the
features are computed and stored when the loaders are built) and with the warm cache of the previous run. An
epoch is its training and validation loops (``on_train_epoch_start`` to ``on_train_epoch_end``). The table gives
the median epoch after the first (steady state) without and with the warm cache, the speed-up, and the one-off
cost of computing the cache (cold fit minus warm fit), also in uncached epochs. Target (issue #7): >= 20x at
demo scale.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial

import lightning as L
import torch

from medfusion.data import DemoDataModule
from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import FUSIONS
from medfusion.models import MultimodalClassifier


class EpochTimer(L.Callback):
    """Wall time of every epoch (training + validation loops)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run(fusion: str, cache: str | None, args: argparse.Namespace) -> tuple[list[float], float]:
    """Epoch times of one fit, and the fit's whole wall time (with the cache's computation in a cold run)."""
    dm = DemoDataModule(
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augment=False,
        feature_cache=cache,
    )
    L.seed_everything(0, verbose=False)
    model = MultimodalClassifier(
        image_encoder=partial(ImageEncoder, "resnet18"),
        text_encoder=partial(TextEncoder, "tiny", pooling="mean"),
        fusion=FUSIONS.get(fusion),
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        class_counts=dm.class_counts,
        vocab_size=dm.vocab_size,
        freeze_encoders=True,
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    return timer.seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", nargs="+", default=["concat", "cross_attention"], choices=FUSIONS.names())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=2000, help="demo dataset size (the demo's own: 2000)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="loader workers without the cache / to compute it")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is left out as warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for fusion in args.fusions:
        plain, _ = run(fusion, None, args)
        with tempfile.TemporaryDirectory() as cache:
            _, cold_fit = run(fusion, cache, args)
            warm, warm_fit = run(fusion, cache, args)
        plain_epoch, warm_epoch = statistics.median(plain[1:]), statistics.median(warm[1:])
        build = cold_fit - warm_fit
        rows.append((fusion, plain_epoch, warm_epoch, plain_epoch / warm_epoch, build, build / plain_epoch))

    print(f"\nDemo data: {args.num_samples} samples, batch {args.batch_size}, {args.epochs} epochs, {args.accelerator}")
    header = ("fusion", "no cache s/epoch", "cached s/epoch", "speed-up", "computing the cache s", "= epochs")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for fusion, plain, warm, ratio, build, epochs in rows:
        print(f"| {fusion} | {plain:.2f} | {warm:.3f} | {ratio:.1f}x | {build:.1f} | {epochs:.1f} |")


if __name__ == "__main__":
    main()
