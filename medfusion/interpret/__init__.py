"""Interpretability: Grad-CAM, cross-modal attention maps, modality gates, MoE routing, and per-sample figures."""

from medfusion.interpret.explain import Explanation, explain_batch, explanation_figure, save_explanations
from medfusion.interpret.gradcam import evaluating, gradcam, gradcam_target, patch_grid
from medfusion.interpret.maps import ForwardMaps, attention_maps, forward_maps, gate_values, routing_weights

__all__ = [
    "Explanation",
    "ForwardMaps",
    "attention_maps",
    "evaluating",
    "explain_batch",
    "explanation_figure",
    "forward_maps",
    "gate_values",
    "gradcam",
    "gradcam_target",
    "patch_grid",
    "routing_weights",
    "save_explanations",
]
