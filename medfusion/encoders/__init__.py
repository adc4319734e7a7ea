"""Image (timm) and text (transformers) encoders returning :class:`Encoded`."""

from medfusion.encoders.encoded import Encoded, encode_present
from medfusion.encoders.image import ImageEncoder
from medfusion.encoders.text import TextEncoder, tiny_bert_config

__all__ = ["Encoded", "ImageEncoder", "TextEncoder", "encode_present", "tiny_bert_config"]
