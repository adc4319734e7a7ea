"""Classification heads: ``logits = head(x)`` for ``x`` [B, in_dim]; build by name with :func:`build_head`."""

from medfusion.heads.base import HEADS, Head, build_head
from medfusion.heads.kan import GroupKANHead, GroupKANLinear, GroupRational, KANHead, KANLinear
from medfusion.heads.mlp import MLPHead
from medfusion.heads.moe import MoEHead, moe_balance_loss
from medfusion.heads.ordinal import CORALHead, CORNHead, exceedance, is_ordinal
from medfusion.heads.residual_mlp import ResidualBlock, ResidualMLPHead

__all__ = [
    "HEADS",
    "CORALHead",
    "CORNHead",
    "GroupKANHead",
    "GroupKANLinear",
    "GroupRational",
    "Head",
    "KANHead",
    "KANLinear",
    "MLPHead",
    "MoEHead",
    "ResidualBlock",
    "ResidualMLPHead",
    "build_head",
    "exceedance",
    "is_ordinal",
    "moe_balance_loss",
]
