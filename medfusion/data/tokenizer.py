"""Text tokenizers: a WordPiece vocabulary trained on the training texts, or a named pretrained one."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Tokenizing in the main process and then forking DataLoader workers is safe for our use;
# silence the library's warning (and its deadlock-avoidance fallback) about it.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDPIECE = "wordpiece"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Sequence[str], vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a BERT-style (lower-cased, WordPiece) tokenizer on ``texts``; runs offline in about a second."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tokenizer(name: str, texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """``"wordpiece"`` trains on ``texts``; anything else is a hub name or local path for AutoTokenizer."""
    if name == WORDPIECE:
        return train_wordpiece(texts, vocab_size=vocab_size)
    return AutoTokenizer.from_pretrained(name)
