"""medfusion: multimodal (image + text) medical classification with PyTorch Lightning.

The public API is re-exported here and imported on first use, so that
``from medfusion.fusion import GatedFusion`` does not pay for Lightning's import.
"""

from __future__ import annotations

from medfusion.runs.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "MultimodalDataModule": "medfusion.data",
    "DemoDataModule": "medfusion.data",
    "TestSet": "medfusion.data",
    "DataError": "medfusion.data",
    "ConfigError": "medfusion.data",
    "ImageEncoder": "medfusion.encoders",
    "TextEncoder": "medfusion.encoders",
    "TabularEncoder": "medfusion.encoders",
    "Encoded": "medfusion.encoders",
    "Fusion": "medfusion.fusion",
    "build_fusion": "medfusion.fusion",
    "Head": "medfusion.heads",
    "build_head": "medfusion.heads",
    "ImageClassifier": "medfusion.models",
    "TextClassifier": "medfusion.models",
    "MultimodalClassifier": "medfusion.models",
    "Predictor": "medfusion.deploy",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
