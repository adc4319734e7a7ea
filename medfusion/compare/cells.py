"""Running one cell of a comparison: ``fit``, then ``test`` of the best epoch's weights, in this process, into the
cell's own directory; its ``result.json`` written last, so a grid re-run skips the finished cells.

A cell writes no checkpoint files unless ``keep_checkpoints``: the checkpoint callback of the base config is
replaced by :class:`~medfusion.callbacks.BestWeights`, which keeps the best epoch's weights (by the same monitor and
mode) in memory, so a cell of frozen, cached encoders spends its time on the fusion and head, not on writing the
encoders' unchanged weights after every epoch.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint

from medfusion.callbacks import BestWeights
from medfusion.cli import LoggerSaveConfigCallback, MedfusionCLI, own_best_checkpoint, program_name_only
from medfusion.compare.axes import Cell, cell_args
from medfusion.data import MultimodalDataModule
from medfusion.data.errors import ConfigError
from medfusion.evaluation import point_metrics
from medfusion.models import ClassifierModule
from medfusion.models.feature_cache import serve_cached_features

QUIET = ("lightning.pytorch", "lightning.fabric")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-run info lines (devices, tips, seeds, cache messages) off while the grid runs."""
    loggers = [logging.getLogger(name) for name in QUIET]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def keep_best_in_memory(trainer: L.Trainer) -> BestWeights | None:
    """Replace the trainer's checkpoint callbacks by a :class:`BestWeights` with the (first) monitored one's
    monitor and mode; None when none monitors a metric (the last epoch's weights are then tested, as
    ``ModelCheckpoint`` without a monitor keeps the last)."""
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    monitored = [c for c in checkpoints if c.monitor]
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    if not monitored:
        return None
    best = BestWeights(monitored[0].monitor, monitored[0].mode)
    trainer.callbacks.append(best)
    return best


@torch.no_grad()
def training_set_metrics(trainer: L.Trainer, model: ClassifierModule, datamodule: Any) -> dict[str, float]:
    """The tested model's metrics on its training rows (``train/<metric>``), as the test set's are computed: the
    training half of a learning curve. Empty for a datamodule without :meth:`train_eval_dataloader`."""
    loader_of = getattr(datamodule, "train_eval_dataloader", None)
    if loader_of is None:
        return {}
    was_training = model.training
    model.eval()
    probs, labels = [], []
    if getattr(datamodule, "feature_cache", None) is not None:  # the hook a Trainer's setup installs, for this loop
        datamodule.use_datasets(serve_cached_features(model, datamodule))
    try:
        with trainer.precision_plugin.forward_context():
            for batch in loader_of():
                batch = trainer.strategy.batch_to_device(batch)
                probs.append(model.evaluate(batch)[0].float().softmax(-1).cpu())
                labels.append(batch["label"].cpu())
    finally:
        model.train(was_training)
        if getattr(datamodule, "feature_cache", None) is not None:
            datamodule.use_datasets(None)
    if not probs:
        return {}
    metrics = point_metrics(torch.cat(probs), torch.cat(labels), graded=bool(getattr(model, "graded", False)))
    return {f"train/{k}": v for k, v in metrics.items()}


def finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isnan(v) else v for k, v in values.items()}


def run_cell(cell: Cell, base: Sequence[str], overrides: Sequence[str], cell_dir: Path, keep_checkpoints: bool) -> dict:
    """Fit, then test the best epoch's weights; returns (and writes as ``result.json``) the cell's axis values, its
    test metrics (every test set), its training-set metrics, the parameter counts, the fit and test times and the
    number of threads it trained with. A half-finished directory of an earlier attempt is removed first.

    A cell's metrics are those of the same cell run alone with as many threads (the same seed, the same sums); with
    another thread count a product or reduction adds in another order, and some trainings (bilinear and attention
    fusions) grow those last-digit differences into visible ones."""
    shutil.rmtree(cell_dir, ignore_errors=True)
    args = cell_args(cell, base, overrides, cell_dir)
    try:
        with program_name_only():  # the cell's own arguments, not those of the compare command
            cli = MedfusionCLI(
                ClassifierModule,
                MultimodalDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,
                run=False,
                auto_configure_optimizers=False,
                save_config_callback=LoggerSaveConfigCallback,
                parser_kwargs={"exit_on_error": False},
            )
    except ArgumentError as err:  # an axis key or value (or an override) fit does not take: named, not a usage dump
        raise ConfigError(
            f"cell {cell.name}: its medfusion fit arguments do not parse: {err}. Fix the axis or override it names "
            f"(the arguments: {' '.join(args)})"
        ) from None
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    best = None if keep_checkpoints else keep_best_in_memory(trainer)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    if keep_checkpoints:
        checkpoint = own_best_checkpoint(trainer)
    else:
        checkpoint = None
        if best is not None:
            best.restore(model)
    trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    test_s = time.perf_counter() - start - fit_s
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test")}
    result = {
        "name": cell.name,
        "seed": cell.seed,
        "settings": {axis.key: value for axis, value in cell.settings},
        "columns": cell.columns(),
        "metrics": finite(metrics),
        "train_metrics": finite(training_set_metrics(trainer, model, datamodule)),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": trainer.current_epoch,
        "fit_s": fit_s,
        "test_s": test_s,
        "threads": torch.get_num_threads(),
    }
    partial = cell_dir / "result.json.tmp"
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.rename(cell_dir / "result.json")  # last: its presence marks the cell finished
    return result


def check_same_grid(out_dir: Path, base: Sequence[str], overrides: Sequence[str]) -> None:
    """Refuse to mix cells of different base configs in one ``out_dir`` (the grid itself may grow or shrink)."""
    spec = {"base": list(base), "overrides": list(overrides)}
    path = out_dir / "grid.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != spec:
            raise ConfigError(
                f"{out_dir} holds a comparison of other base configs or overrides ({previous}); finished cells would "
                f"be mixed with new ones. Use another --out_dir, or delete {out_dir}."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2) + "\n")
