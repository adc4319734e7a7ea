"""LightningModules: single-modality and multimodal classifiers over named modalities, sharing one base."""

from medfusion.models.base import ClassifierModule
from medfusion.models.guards import DivergedError
from medfusion.models.multimodal import MultimodalClassifier
from medfusion.models.unimodal import ImageClassifier, SingleModalityClassifier, TabularClassifier, TextClassifier

__all__ = [
    "ClassifierModule",
    "DivergedError",
    "ImageClassifier",
    "MultimodalClassifier",
    "SingleModalityClassifier",
    "TabularClassifier",
    "TextClassifier",
]
