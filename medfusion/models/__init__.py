"""LightningModules: image-only, text-only and image+text classifiers sharing one base."""

from medfusion.models.base import ClassifierModule
from medfusion.models.guards import DivergedError
from medfusion.models.multimodal import MultimodalClassifier
from medfusion.models.unimodal import ImageClassifier, TextClassifier

__all__ = ["ClassifierModule", "DivergedError", "ImageClassifier", "MultimodalClassifier", "TextClassifier"]
