"""The metrics every medfusion model logs (torchmetrics; synchronised across processes at compute)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.utilities import dim_zero_cat


class MacroAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes whose AUROC is defined: at least one positive and one negative target.

    torchmetrics 1.x scores a class absent from the targets 0 and keeps it in the macro average; here it is left out
    (NaN if no class is defined), as in :func:`medfusion.evaluation.weighted_metrics`.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average="none")

    def compute(self) -> Tensor:
        """The mean of the per-class AUROCs of the defined classes."""
        per_class = super().compute()
        support = torch.bincount(dim_zero_cat(self.target).long(), minlength=self.num_classes)
        defined = (support > 0) & (support < support.sum())
        return per_class[defined].mean() if defined.any() else per_class.new_tensor(float("nan"))


class GradeMAE(MeanAbsoluteError):
    """Mean absolute grade error ``mean |argmax p - y|`` of graded classes (their index is the grade)."""

    def update(self, probs: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch of class probabilities ``[B, K]`` and grades ``[B]``."""
        super().update(probs.argmax(-1).float(), target.float())


def graded_metrics(num_classes: int) -> dict[str, Any]:
    """For graded classes (``class_names`` in grade order): quadratic weighted kappa (``qwk``, the DR studies'
    metric) and the mean absolute grade error (``grade_mae``) of the top class."""
    return {"qwk": MulticlassCohenKappa(num_classes, weights="quadratic"), "grade_mae": GradeMAE()}


def classification_metrics(num_classes: int, prefix: str, graded: bool = False) -> MetricCollection:
    """Accuracy, balanced accuracy (= macro recall, the ISIC 2018 metric), macro precision/recall/F1/AUROC and
    the expected calibration error (top-label, 15 equal-width bins). Update them with probabilities, not logits.

    Macro averages follow the convention of :mod:`medfusion.evaluation` (torchmetrics' own for precision, recall
    and F1): a class absent from both the targets and the predictions is left out, and macro AUROC averages only
    the classes present among the targets. Keys are ``{prefix}acc``, ``{prefix}balanced_acc``, ... e.g.
    ``val/macro_f1``. ``graded`` adds :func:`graded_metrics`. States are summed/gathered across DDP ranks when
    computed, so every rank reports whole-set metrics.
    """
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassRecall(num_classes, average="macro"),
            "macro_precision": MulticlassPrecision(num_classes, average="macro"),
            "macro_recall": MulticlassRecall(num_classes, average="macro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "macro_auroc": MacroAUROC(num_classes),
            "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
            **(graded_metrics(num_classes) if graded else {}),
        },
        prefix=prefix,
    )
