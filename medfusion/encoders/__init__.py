"""Image (timm; 2.5D slice stacks), text (transformers) and tabular (FT-Transformer feature tokens) encoders
returning :class:`Encoded`."""

from medfusion.encoders.encoded import Encoded, call_encoder, encode_present
from medfusion.encoders.image import ImageEncoder
from medfusion.encoders.pooling import GatedAttentionPool
from medfusion.encoders.slices import SliceStackEncoder
from medfusion.encoders.study import StudyEncoder
from medfusion.encoders.tabular import TabularEncoder
from medfusion.encoders.text import TextEncoder, tiny_bert_config

__all__ = [
    "Encoded",
    "GatedAttentionPool",
    "ImageEncoder",
    "SliceStackEncoder",
    "StudyEncoder",
    "TabularEncoder",
    "TextEncoder",
    "call_encoder",
    "encode_present",
    "tiny_bert_config",
]
