"""The metrics every medfusion model logs (torchmetrics; synchronised across processes at compute)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy, balanced accuracy (= macro recall, the ISIC 2018 metric), macro precision/recall/F1/AUROC and
    the expected calibration error (top-label, 15 equal-width bins). Update them with probabilities, not logits.

    Keys are ``{prefix}acc``, ``{prefix}balanced_acc``, ... e.g. ``val/macro_f1``. States are
    summed/gathered across DDP ranks when computed, so every rank reports whole-set metrics.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassRecall(num_classes, average="macro"),
            "macro_precision": MulticlassPrecision(num_classes, average="macro"),
            "macro_recall": MulticlassRecall(num_classes, average="macro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "macro_auroc": MulticlassAUROC(num_classes, average="macro"),
            "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
        },
        prefix=prefix,
    )
