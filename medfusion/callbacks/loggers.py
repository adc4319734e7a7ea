"""Send images and tables to whichever loggers the trainer has (W&B, TensorBoard); others are skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image


def _as_array(image: Path | Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Path):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image


def log_image(trainer: L.Trainer, key: str, image: Path | Image.Image | np.ndarray, caption: str | None = None) -> None:
    """Log one RGB image (a PNG path, PIL image or ``[H, W, 3]`` uint8 array) under ``key`` at the current step."""
    array = None
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            array = _as_array(image) if array is None else array
            extra = {"caption": [caption]} if caption else {}
            logger.log_image(key, [array], step=trainer.global_step, **extra)
        elif isinstance(logger, TensorBoardLogger):
            array = _as_array(image) if array is None else array
            logger.experiment.add_image(key, array, trainer.global_step, dataformats="HWC")


def log_table(trainer: L.Trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Log a table to W&B loggers (cells may be ``wandb.Image``); other loggers have no table type."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key, columns=list(columns), data=[list(row) for row in rows], step=trainer.global_step)


def has_table_logger(trainer: L.Trainer) -> bool:
    """Whether any logger can show tables (W&B)."""
    return any(isinstance(logger, WandbLogger) for logger in trainer.loggers)


def log_confusion_matrix(
    trainer: L.Trainer, key: str, labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str]
) -> None:
    """Log W&B's interactive confusion matrix (the PNG goes through :func:`log_image` for the other loggers)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            plot = wandb.plot.confusion_matrix(y_true=list(labels), preds=list(preds), class_names=list(class_names))
            logger.experiment.log({key: plot, "trainer/global_step": trainer.global_step})
