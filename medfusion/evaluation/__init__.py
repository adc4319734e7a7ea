"""Evaluation utilities: bootstrap confidence intervals, calibration, confusion matrices, reports, embedding maps."""

from __future__ import annotations

from medfusion.evaluation.bootstrap import bootstrap_ci, point_metrics, weighted_metrics
from medfusion.evaluation.calibration import expected_calibration_error, fit_temperature
from medfusion.evaluation.reports import (
    classification_report,
    confusion_matrix,
    embedding_map,
    project_2d,
    write_classification_report,
    write_confusion_matrix,
)

__all__ = [
    "bootstrap_ci",
    "classification_report",
    "confusion_matrix",
    "embedding_map",
    "expected_calibration_error",
    "fit_temperature",
    "point_metrics",
    "project_2d",
    "weighted_metrics",
    "write_classification_report",
    "write_confusion_matrix",
]
