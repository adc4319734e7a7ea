"""Callbacks: run outputs (metrics.json, predictions.csv)."""

from medfusion.callbacks.outputs import MetricsJSON, PredictionWriter, run_dir

__all__ = ["MetricsJSON", "PredictionWriter", "run_dir"]
