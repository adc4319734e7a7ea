"""Fusion modules: plain ``nn.Module``s over tensors, one family per file, registered by name in ``FUSIONS``."""

from medfusion.fusion.attention import CrossAttentionBlock, TokenFusion, masked_mean
from medfusion.fusion.base import FUSIONS, Fusion, build_fusion
from medfusion.fusion.bilinear import BilinearFusion, TensorFusion, signed_sqrt
from medfusion.fusion.checks import check_last_dim
from medfusion.fusion.co_attention import CoAttentionFusion
from medfusion.fusion.concat import ConcatFusion
from medfusion.fusion.cross_attention import CrossAttentionFusion
from medfusion.fusion.elementwise import AddFusion, ElementwiseFusion, MulFusion
from medfusion.fusion.gated import GatedFusion, GatedUnit
from medfusion.fusion.hierarchical import HierarchicalFusion
from medfusion.fusion.low_rank import LowRankTensorFusion

__all__ = [
    "FUSIONS",
    "AddFusion",
    "BilinearFusion",
    "CoAttentionFusion",
    "ConcatFusion",
    "CrossAttentionBlock",
    "CrossAttentionFusion",
    "ElementwiseFusion",
    "Fusion",
    "GatedFusion",
    "GatedUnit",
    "HierarchicalFusion",
    "LowRankTensorFusion",
    "MulFusion",
    "TensorFusion",
    "TokenFusion",
    "build_fusion",
    "check_last_dim",
    "masked_mean",
    "signed_sqrt",
]
