"""Losses: classification losses registered by name in ``LOSSES`` (build with :func:`build_loss`), post-hoc logit
adjustment, and the auxiliary contrastive and disagreement objectives; one family per file."""

from medfusion.losses.base import LOSSES, ClassWeighting, Reduction, build_loss, class_weights_from_counts
from medfusion.losses.contrastive import clip_loss, supcon_loss
from medfusion.losses.cross_entropy import CrossEntropyLoss
from medfusion.losses.disagreement import disagreement_weight, symmetric_kl
from medfusion.losses.focal import FocalLoss
from medfusion.losses.logit_adjusted import LogitAdjustedLoss, logit_adjust
from medfusion.losses.ordinal import CoralLoss, CornLoss

__all__ = [
    "LOSSES",
    "ClassWeighting",
    "CoralLoss",
    "CornLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LogitAdjustedLoss",
    "Reduction",
    "build_loss",
    "class_weights_from_counts",
    "clip_loss",
    "disagreement_weight",
    "logit_adjust",
    "supcon_loss",
    "symmetric_kl",
]
