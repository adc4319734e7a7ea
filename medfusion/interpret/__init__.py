"""Interpretability: Grad-CAM per image modality, attention between modalities, modality weights, MoE routing,
permutation importance of the tabular features, and per-sample figures."""

from medfusion.interpret.explain import Explanation, explain_batch, explanation_figure, save_explanations
from medfusion.interpret.gradcam import evaluating, gradcam, gradcam_target, patch_grid
from medfusion.interpret.maps import (
    ForwardMaps,
    attention_maps,
    forward_maps,
    gate_values,
    patch_attention,
    patch_map,
    routing_weights,
)
from medfusion.interpret.permutation import (
    PermutationImportance,
    permutation_figure,
    permutation_importance,
    save_permutation_importance,
)

__all__ = [
    "Explanation",
    "ForwardMaps",
    "PermutationImportance",
    "attention_maps",
    "evaluating",
    "explain_batch",
    "explanation_figure",
    "forward_maps",
    "gate_values",
    "gradcam",
    "gradcam_target",
    "patch_attention",
    "patch_grid",
    "patch_map",
    "permutation_figure",
    "permutation_importance",
    "routing_weights",
    "save_explanations",
    "save_permutation_importance",
]
