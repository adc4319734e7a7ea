"""Callbacks: run outputs (metrics.json, predictions.csv), test-time evaluation, validation-sample views, the
resumable checkpoint."""

from medfusion.callbacks.checkpoint import BestWeights, ResumableCheckpoint
from medfusion.callbacks.evaluation import Evaluation
from medfusion.callbacks.outputs import MetricsJSON, PredictionWriter, RetrievedPassages, run_dir
from medfusion.callbacks.samples import Explanations, ValidationPredictions

__all__ = [
    "BestWeights",
    "Evaluation",
    "Explanations",
    "MetricsJSON",
    "PredictionWriter",
    "ResumableCheckpoint",
    "RetrievedPassages",
    "ValidationPredictions",
    "run_dir",
]
