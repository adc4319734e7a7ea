"""Test-time evaluation beyond the running metrics: bootstrap confidence intervals, confusion matrix,
classification report, embedding map and (optionally) temperature scaling on the validation set."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from medfusion.callbacks.loggers import log_confusion_matrix, log_image, log_table
from medfusion.callbacks.outputs import gather_objects, run_dir
from medfusion.evaluation import (
    bootstrap_ci,
    classification_report,
    confusion_matrix,
    embedding_map,
    fit_temperature,
    write_classification_report,
    write_confusion_matrix,
)


def file_stem(prefix: str) -> str:
    """``test/`` -> ``test``, ``test_external/`` -> ``test_external``."""
    return prefix.rstrip("/")


def write_test_predictions(
    path: Path, ids: list[str], labels: torch.Tensor, probs: torch.Tensor, class_names: list[str]
) -> None:
    """``id, label, prob_<class>...`` per case (``label`` a class name), in the order given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", *(f"prob_{name}" for name in class_names)])
        for sample_id, label, row in zip(ids, labels.tolist(), probs.double().tolist(), strict=True):
            writer.writerow([sample_id, class_names[label], *(f"{p:.8g}" for p in row)])


class Evaluation(Callback):
    """After ``test``, for every test set (``test/``, ``test_<name>/``):

    - logs 95 % percentile-bootstrap intervals of accuracy, balanced accuracy, macro-F1 and macro-AUROC (and,
      for a graded model, quadratic weighted kappa and the mean absolute grade error) as
      ``<prefix><metric>_ci_low`` / ``_ci_high`` (so they reach ``metrics.json`` and every logger);
    - writes ``evaluation/<set>_predictions.csv`` (``id, label, prob_<class>...``, every case once, sorted by id:
      what paired comparisons between runs read), ``evaluation/<set>_confusion_matrix.{csv,png}``,
      ``<set>_classification_report.csv`` and
      ``<set>_embedding_map.png`` (t-SNE of the features before the head, coloured by class) in the run dir,
      and logs the images, a W&B confusion matrix and a per-class table; a class with no samples in the test set
      is reported with support 0, warned about and, if also never predicted, shown ``n/a`` and left out of the
      macro averages (the convention of :mod:`medfusion.evaluation`, the same as the logged metrics');
    - with ``temperature_scaling``, first fits the temperature of the logits on the validation set
      (Guo et al. 2017; also before ``predict``) and logs it as ``test/temperature``.

    Args:
        bootstrap_resamples: bootstrap resamples per test set (0 = no intervals).
        confidence: the intervals' confidence level.
        temperature_scaling: fit a temperature on the validation set before test and predict.
        embedding_map: write and log the embedding map.
        confusion_matrix_png: write and log the confusion matrix as a picture too (its CSV is always written;
            a grid of many runs saves ~0.4 s a run without it).
        embedding_method: ``tsne`` or ``pca``.
        output_dir: sub-directory of the run dir for the files.
    """

    def __init__(
        self,
        bootstrap_resamples: int = 1000,
        confidence: float = 0.95,
        temperature_scaling: bool = False,
        embedding_map: bool = True,
        embedding_method: Literal["tsne", "pca"] = "tsne",
        output_dir: str = "evaluation",
        confusion_matrix_png: bool = True,
    ) -> None:
        self.bootstrap_resamples = bootstrap_resamples
        self.confidence = confidence
        self.temperature_scaling = temperature_scaling
        self.embedding_map = embedding_map
        self.embedding_method = embedding_method
        self.output_dir = output_dir
        self.confusion_matrix_png = confusion_matrix_png
        self._outputs: dict[int, list[dict[str, Any]]] = defaultdict(list)

    # ------------------------------------------------------------------ temperature scaling
    def _fit_temperature(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "val_dataloader"):
            rank_zero_warn("temperature_scaling needs a datamodule with a validation set; skipped")
            return
        datamodule.setup("validate")
        pl_module.temperature.fill_(1.0)
        was_training = pl_module.training
        pl_module.eval()
        logits, labels = [], []
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for batch in datamodule.val_dataloader():
                batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                logits.append(pl_module.predict_logits(batch).float().cpu())
                labels.append(batch["label"].cpu())
        pl_module.train(was_training)
        parts = gather_objects((torch.cat(logits), torch.cat(labels)) if logits else None)
        parts = [p for p in parts if p is not None]
        if not parts:
            rank_zero_warn("temperature_scaling: the validation set is empty; temperature stays 1")
            return
        temperature = fit_temperature(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        pl_module.temperature.fill_(temperature)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outputs = defaultdict(list)
        if self.temperature_scaling:
            self._fit_temperature(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.temperature_scaling:
            self._fit_temperature(trainer, pl_module)

    # ------------------------------------------------------------------ test outputs
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict) or "probs" not in outputs:
            return
        self._outputs[dataloader_idx].append(
            {
                "id": list(outputs["id"]),
                "label": outputs["label"].detach().cpu(),
                "probs": outputs["probs"].detach().float().cpu(),
                "features": outputs["features"].detach().float().cpu() if self.embedding_map else None,
            }
        )

    def _collect(self, dataloader_idx: int) -> dict[str, Any] | None:
        """This test set's outputs from every rank, each id once, sorted by id (so that the bootstrap and the
        embedding map do not depend on how samples were split across processes)."""
        parts = gather_objects(self._outputs.get(dataloader_idx, []))
        seen: set[str] = set()
        ids: list[str] = []
        picked: list[tuple[dict[str, Any], torch.Tensor]] = []
        for batch in (batch for part in parts for batch in part):
            keep = [i for i, sample_id in enumerate(batch["id"]) if sample_id not in seen]
            seen.update(batch["id"][i] for i in keep)
            ids += [batch["id"][i] for i in keep]
            picked.append((batch, torch.tensor(keep, dtype=torch.long)))
        if not ids:
            return None
        keys = ["label", "probs", "features"] if self.embedding_map else ["label", "probs"]
        order = sorted(range(len(ids)), key=ids.__getitem__)
        data = {key: torch.cat([batch[key][rows] for batch, rows in picked])[order] for key in keys}
        return {"id": [ids[i] for i in order], **data}

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = run_dir(trainer) / self.output_dir  # a collective: every rank asks
        class_names = list(getattr(pl_module, "class_names", []))
        if self.temperature_scaling:
            pl_module.log("test/temperature", float(pl_module.temperature), rank_zero_only=True)
        for dataloader_idx, prefix in enumerate(getattr(pl_module, "test_prefixes", ["test/"])):
            data = self._collect(dataloader_idx)
            if data is None:
                continue
            labels, probs = data["label"], data["probs"]
            if self.bootstrap_resamples > 0:
                graded = bool(getattr(pl_module, "graded", False))
                intervals = bootstrap_ci(probs, labels, self.bootstrap_resamples, self.confidence, graded=graded)
                for name, (low, high) in intervals.items():
                    pl_module.log(f"{prefix}{name}_ci_low", low, rank_zero_only=True)
                    pl_module.log(f"{prefix}{name}_ci_high", high, rank_zero_only=True)
            if trainer.is_global_zero:
                self._write(trainer, out_dir, file_stem(prefix), data, class_names)
        self._outputs = defaultdict(list)

    def _write(self, trainer: L.Trainer, out_dir: Any, stem: str, data: dict[str, Any], class_names: list[str]) -> None:
        labels, preds = data["label"], data["probs"].argmax(-1)
        write_test_predictions(out_dir / f"{stem}_predictions.csv", data["id"], labels, data["probs"], class_names)
        cm = confusion_matrix(preds, labels, len(class_names))
        cm_png = out_dir / f"{stem}_confusion_matrix.png" if self.confusion_matrix_png else None
        write_confusion_matrix(cm, class_names, out_dir / f"{stem}_confusion_matrix.csv", cm_png, title=stem)
        report = classification_report(cm, class_names)
        absent = [name for name, support in zip(class_names, cm.sum(1).tolist(), strict=True) if support == 0]
        if absent:
            rank_zero_warn(
                f"{stem}: no samples of class(es) {', '.join(absent)}; those never predicted are left out of the "
                "macro averages (n/a in the classification report), those predicted score 0"
            )
        write_classification_report(report, out_dir / f"{stem}_classification_report.csv")
        if cm_png is not None:
            log_image(trainer, f"{stem}/confusion_matrix", cm_png)
        log_confusion_matrix(trainer, f"{stem}/confusion_matrix_plot", labels.tolist(), preds.tolist(), class_names)
        columns = ["class", "precision", "recall", "f1", "support"]
        log_table(trainer, f"{stem}/per_class", columns, [[row[c] for c in columns] for row in report])
        if self.embedding_map and len(labels) >= 4:
            path = embedding_map(
                data["features"], labels, class_names, out_dir / f"{stem}_embedding_map.png",
                method=self.embedding_method, title=f"{stem}: features before the head",
            )  # fmt: skip
            log_image(trainer, f"{stem}/embedding_map", path)
