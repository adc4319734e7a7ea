"""Callbacks that write a run's results next to its logs: ``metrics.json``, ``predictions.csv`` and
``retrieved_passages.csv``."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback


def run_dir(trainer: L.Trainer) -> Path:
    """The run's own versioned directory (the logger's), or ``default_root_dir`` without a logger.

    ``trainer.log_dir`` broadcasts from rank zero: call this on every rank, never on one only.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process (a one-element list without DDP); a collective: call it on every rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


class MetricsJSON(Callback):
    """Write final metrics to ``<run dir>/metrics.json`` on rank zero: every ``test*/`` key after
    ``test``, every ``val/`` key after a ``validate`` run."""

    def __init__(self, filename: str = "metrics.json") -> None:
        self.filename = filename

    def _write(self, trainer: L.Trainer, prefix: str) -> None:
        path = run_dir(trainer) / self.filename
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(prefix)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: (None if math.isnan(v) else v) for k, v in metrics.items()}, indent=2) + "\n")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "test")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, "val/")


class RetrievedPassages(Callback):
    """Write ``<run dir>/retrieved_passages.csv`` (``set, id, passages``: the ids of the knowledge passages appended
    to each sample's text, ``;``-separated, best first) on rank zero when the data uses ``data.knowledge``."""

    def __init__(self, filename: str = "retrieved_passages.csv") -> None:
        self.filename = filename

    def _write(self, trainer: L.Trainer) -> None:
        found = getattr(trainer.datamodule, "retrieved_passages", None)
        rows = found() if found is not None else []
        path = run_dir(trainer) / self.filename
        if not rows or not trainer.is_global_zero:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["set", "id", "passages"])
            writer.writerows([name, sample_id, ";".join(ids)] for name, sample_id, ids in rows)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)


class PredictionWriter(BasePredictionWriter):
    """Write ``id, prediction, prob_<class>..., status, error`` for every requested sample, exactly once, on rank
    zero, in the order of the prediction set; a graded model (``model.graded``) adds ``risk_ge_<grade>...``,
    ``P(y >= grade)``, after the probabilities.

    Predictions of all DDP ranks are gathered and an id seen twice is written once, so no padding duplicate
    reaches the file. A sample without a usable prediction (an unreadable image with ``data.on_bad_image: skip``,
    a non-finite model output, or an id that never came back from the model) keeps its row, with empty prediction
    and probabilities, ``status`` ``error`` and the reason in ``error``; the others have ``status`` ``ok``.
    :attr:`summary` holds ``(rows, errors, path)`` after writing (on every rank).

    Args:
        output_path: the CSV path; default ``<run dir>/predictions.csv``.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path
        self.summary: tuple[int, int, Path] | None = None

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        local = [
            (i, p.tolist(), e)
            for b in batches
            for i, p, e in zip(b["id"], b["probs"].cpu(), b.get("error") or [None] * len(b["id"]), strict=True)
        ]
        gathered = gather_objects(local)
        path = Path(self.output_path) if self.output_path else run_dir(trainer) / "predictions.csv"
        results: dict[str, tuple[list[float], str | None]] = {}
        for part in gathered:
            for sample_id, probs, error in part:
                if error is None and not all(math.isfinite(p) for p in probs):
                    error = "the model's output is not finite (NaN or infinity)"
                results.setdefault(sample_id, (probs, error))
        requested = requested_ids(trainer) or list(results)
        lost = "not predicted: the sample never came back from the model"
        rows = [(i, *results.get(i, ([], lost))) for i in dict.fromkeys(requested)]
        self.summary = (len(rows), sum(error is not None for _, _, error in rows), path)
        if trainer.is_global_zero:
            graded = bool(getattr(pl_module, "graded", False))
            write_predictions(path, rows, list(getattr(pl_module, "class_names", [])), graded)


def requested_ids(trainer: L.Trainer) -> list[str] | None:
    """The ids of the datamodule's prediction set, when it has one (``datasets["predict"]``)."""
    datasets = getattr(trainer.datamodule, "datasets", None) or {}
    dataset = datasets.get("predict") if isinstance(datasets, dict) else None
    return list(dataset.ids) if dataset is not None and hasattr(dataset, "ids") else None


def write_predictions(
    path: Path, rows: Sequence[tuple[str, list[float], str | None]], class_names: list[str], graded: bool = False
) -> None:
    """The predictions CSV: a row per ``(id, probs, error)``; an errored row has no prediction or probabilities.
    ``graded`` adds the risk scores ``risk_ge_<grade> = P(y >= grade)`` for every grade but the lowest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    risks = [f"risk_ge_{c}" for c in class_names[1:]] if graded else []
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prediction", *(f"prob_{c}" for c in class_names), *risks, "status", "error"])
        for sample_id, probs, error in rows:
            if error is not None:
                writer.writerow([sample_id, "", *([""] * (len(class_names) + len(risks))), "error", error])
                continue
            best = max(range(len(probs)), key=probs.__getitem__)
            risk = [min(sum(probs[k:]), 1.0) for k in range(1, len(probs))] if graded else []
            writer.writerow([sample_id, class_names[best], *(f"{p:.6f}" for p in [*probs, *risk]), "ok", ""])
