"""Deploying a trained model: :class:`Predictor` (one case or many from Python, on the PyTorch model or on ONNX
Runtime), ONNX export with a parity check, and the model card. ``Predictor.from_export`` imports no Lightning."""

from __future__ import annotations

from medfusion.runs.lazy import lazy_exports

_EXPORTS = {
    "Prediction": "medfusion.deploy.predictor",
    "Predictor": "medfusion.deploy.predictor",
    "Preprocessing": "medfusion.deploy.inputs",
    "ParityReport": "medfusion.deploy.onnx_export",
    "export_onnx": "medfusion.deploy.onnx_export",
    "model_card": "medfusion.deploy.model_card",
    "model_from_checkpoint": "medfusion.deploy.rebuild",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
