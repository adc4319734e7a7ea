"""The metrics every medfusion model logs (torchmetrics; synchronised across processes at compute)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Accuracy, balanced accuracy (= macro recall, the ISIC 2018 metric), macro precision/recall/F1/AUROC.

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
        },
        prefix=prefix,
    )
