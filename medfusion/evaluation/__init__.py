"""Evaluation utilities: bootstrap confidence intervals, paired comparisons (bootstrap difference, DeLong),
calibration, confusion matrices, reports, embedding maps.

Macro averages, everywhere in medfusion (the logged torchmetrics of :mod:`medfusion.metrics`, the classification
report, the bootstrap), follow one convention, torchmetrics' and scikit-learn's with the labels taken from the data:

- precision, recall (= balanced accuracy) and F1 average over the classes that occur in the evaluated set's targets
  or predictions (``tp + fp + fn > 0``); within them a 0/0 ratio counts 0 (a class never predicted has precision 0,
  a class predicted but absent from the targets has recall 0: all its predictions are false positives);
- a class absent from both targets and predictions has no defined value and is left out, so a class missing from a
  test split does not pull the averages towards 0 (the report shows it with support 0 and ``n/a``);
- macro AUROC averages over the classes with at least one positive and one negative target (undefined otherwise).
"""

from __future__ import annotations

from medfusion.evaluation.bootstrap import bootstrap_ci, point_metrics, weighted_metrics
from medfusion.evaluation.calibration import expected_calibration_error, fit_temperature
from medfusion.evaluation.paired import (
    DeLongResult,
    PairedDifference,
    delong_multiclass,
    delong_test,
    paired_bootstrap_difference,
)
from medfusion.evaluation.reports import (
    classification_report,
    confusion_matrix,
    embedding_map,
    project_2d,
    write_classification_report,
    write_confusion_matrix,
)

__all__ = [
    "DeLongResult",
    "PairedDifference",
    "bootstrap_ci",
    "classification_report",
    "confusion_matrix",
    "delong_multiclass",
    "delong_test",
    "embedding_map",
    "expected_calibration_error",
    "fit_temperature",
    "paired_bootstrap_difference",
    "point_metrics",
    "project_2d",
    "weighted_metrics",
    "write_classification_report",
    "write_confusion_matrix",
]
