"""medfusion: multimodal (image + text) medical classification with PyTorch Lightning."""

__version__ = "0.1.0"
