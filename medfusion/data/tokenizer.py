"""Text tokenizers: a WordPiece vocabulary trained on the training texts, or a named pretrained one."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from medfusion.data.errors import ConfigError
from medfusion.runs.progress import track

# Tokenizing in the main process and then forking DataLoader workers is safe for our use;
# silence the library's warning (and its deadlock-avoidance fallback) about it.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDPIECE = "wordpiece"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD_ROOM = 1000  # whole frequent words the suggested smallest vocab_size keeps beyond the characters


def train_wordpiece(texts: Sequence[str], vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A BERT-style (lower-cased) WordPiece tokenizer whose vocabulary comes from ``texts``.

    The vocabulary is every character (alone and as a ``##`` continuation) plus the most frequent
    words seen at least ``min_frequency`` times, ordered by count then alphabetically, so the same
    texts always give the same ids: the ``tokenizers`` WordPiece trainer breaks ties in hash-map
    order and gives a different vocabulary in every process, which would make runs irreproducible
    and checkpoints unusable with a retrained tokenizer. Unseen words split into known pieces.
    """
    tokenizer = Tokenizer(models.WordPiece(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = word_counts(texts, tokenizer)
    chars = sorted({c for word in words for c in word})
    pieces = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    frequent = sorted((w for w, n in words.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-words[w], w))
    if len(pieces) > vocab_size:
        room = min(len(frequent), _WORD_ROOM)
        why = "a WordPiece vocabulary needs every character of the training texts"
        why = f"{len(pieces)}, plus room for {room} frequent word(s); {why}" if room else why
        raise ConfigError(
            f"data.vocab_size={vocab_size} is below the {len(pieces)} tokens a WordPiece vocabulary of the training "
            f"texts needs: their {len(chars)} distinct characters, alone and as ## continuations, and "
            f"{len(SPECIAL_TOKENS)} special tokens. Fix: set data.vocab_size to at least {len(pieces) + room} "
            f"({why}), or use a pretrained tokenizer (data.tokenizer: <hub name or local path>)."
        )
    vocab = {token: i for i, token in enumerate([*pieces, *frequent[: vocab_size - len(pieces)]])}
    tokenizer.model = models.WordPiece(vocab=vocab, unk_token="[UNK]")
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


# BERT's normalizer and pre-tokenizer on printable ASCII: lower-case, split on whitespace, punctuation alone.
PLAIN_ASCII = re.compile(r"[\t\n\r\x20-\x7e]*")
_PUNCTUATION = r"!-/:-@\[-`{-~"
BERT_WORDS = re.compile(rf"[^\s{_PUNCTUATION}]+|[{_PUNCTUATION}]")


def word_counts(texts: Sequence[str], tokenizer: Tokenizer) -> Counter[str]:
    """How often each word (as ``tokenizer``'s BERT normalizer and pre-tokenizer split texts) occurs in ``texts``.

    Texts of printable ASCII, the common case, are split by one regular expression over chunks of them (the same
    words, ~30x faster than a call into the tokenizer per text); the others go through the tokenizer."""
    counts: Counter[str] = Counter()
    plain = [t for t in texts if PLAIN_ASCII.fullmatch(t)]
    chunks = (plain[start : start + 4096] for start in range(0, len(plain), 4096))
    for chunk in track(chunks, description="counting words", total=len(plain), unit="texts", size=len):
        counts.update(BERT_WORDS.findall("\n".join(chunk).lower()))
    normalize, split = tokenizer.normalizer.normalize_str, tokenizer.pre_tokenizer.pre_tokenize_str
    counts.update(word for text in texts if not PLAIN_ASCII.fullmatch(text) for word, _ in split(normalize(text)))
    return counts


def build_tokenizer(name: str, texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """``"wordpiece"`` trains on ``texts``; anything else is a hub name or local path for AutoTokenizer."""
    if name == WORDPIECE:
        return train_wordpiece(texts, vocab_size=vocab_size)
    return pretrained_tokenizer(name)


def pretrained_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A model's own tokenizer (hub name or local directory), refusing one with no vocabulary: for a
    folder with only ``config.json`` and weights, transformers builds a tokenizer of just the special
    tokens, which would silently turn every word into ``[UNK]``."""
    tokenizer = AutoTokenizer.from_pretrained(name)
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ValueError(
            f"{name} has no tokenizer vocabulary (no tokenizer.json, vocab.txt, ...): only its {len(tokenizer)} "
            "special tokens. Fix: point data.tokenizer at a hub name or folder with the model's tokenizer files "
            "(tokenizer.save_pretrained(folder) writes them), or use data.tokenizer: wordpiece with an untrained model."
        )
    return tokenizer
