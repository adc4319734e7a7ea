"""Image (timm) and text (transformers) encoders returning :class:`Encoded`."""

from medfusion.encoders.encoded import Encoded
from medfusion.encoders.image import ImageEncoder
from medfusion.encoders.text import TextEncoder, tiny_bert_config

__all__ = ["Encoded", "ImageEncoder", "TextEncoder", "tiny_bert_config"]
