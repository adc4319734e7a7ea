"""Token ids computed when a sample is read, not all at set-up: a million texts cost a minute to tokenize and
~1 KB each as Python lists, so the dataset keeps the texts and tokenizes each one in the loader's workers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tokenizers import models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerBase

from medfusion.data.tokenizer import BERT_WORDS, PLAIN_ASCII
from medfusion.runs.progress import track


def encode(tokenizer: PreTrainedTokenizerBase, max_length: int, text: str) -> list[int]:
    """The token ids of ``text``, special tokens included, truncated to ``max_length``."""
    encoded = tokenizer(
        text, truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
    )
    return encoded["input_ids"]


class TokenIds(Sequence):
    """The token ids of ``texts`` (None stays None), truncated to ``max_length``, tokenized on access.

    :meth:`count_truncated` counts the texts longer than ``max_length`` tokens while tokenizing only those that
    could be: a WordPiece, BPE or word-level token spans at least one byte of the UTF-8 text (a Unigram one,
    SentencePiece's, at least half a byte: it may stand alone as the word-start marker), so a text of few enough
    bytes cannot exceed ``max_length`` once the special tokens are added.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | None], max_length: int) -> None:
        self.tokenizer, self.texts, self.max_length = tokenizer, texts, max_length
        self._specials = tokenizer.num_special_tokens_to_add()
        backend = getattr(tokenizer, "backend_tokenizer", None)
        model = getattr(backend, "model", None)
        bounded = isinstance(model, (models.WordPiece, models.BPE, models.WordLevel))
        self._per_byte = 1 if bounded else 2 if isinstance(model, models.Unigram) else None
        self._counter = _WordPieceCounter.of(tokenizer)
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def digest(self) -> str:
        """A hash of what determines the ids: the tokenizer (its full definition), ``max_length`` and the texts;
        computed once, without tokenizing (caches key their entries by it)."""
        if self._digest is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            definition = backend.to_str() if backend is not None else repr(self.tokenizer)
            digest = hashlib.blake2b(digest_size=16)
            for part in (definition, str(self.max_length), *self.texts):  # length-prefixed: no two inputs collide
                encoded = b"" if part is None else part.encode()
                digest.update(b"N" if part is None else b"T" + len(encoded).to_bytes(8, "little") + encoded)
            self._digest = digest.hexdigest()
        return self._digest

    def __getitem__(self, index: int) -> list[int] | None:  # type: ignore[override]
        text = self.texts[index]
        return None if text is None else encode(self.tokenizer, self.max_length, text)

    def _may_exceed(self, text: str) -> bool:
        if self._per_byte is None:
            return True
        return len(text.encode()) * self._per_byte + self._specials > self.max_length

    def count_truncated(self, description: str = "counting truncated texts") -> int:
        """How many texts have more than ``max_length`` tokens (special tokens included)."""
        candidates = [t for t in self.texts if t is not None and self._may_exceed(t)]
        chunks = (candidates[start : start + 1024] for start in range(0, len(candidates), 1024))
        return sum(
            sum(length > self.max_length for length in self._lengths(chunk))
            for chunk in track(chunks, description=description, total=len(candidates), unit="texts", size=len)
        )

    def _lengths(self, texts: list[str]) -> list[int]:
        """Untruncated token counts, special tokens included: counted word by word for plain-ASCII texts of a
        BERT-style WordPiece tokenizer (:class:`_WordPieceCounter`), else by the Rust tokenizer directly (without
        the offsets and Python objects per token that the transformers call builds)."""
        if self._counter is not None:
            counts = [self._counter.count(text) for text in texts]
            rest = [text for text, n in zip(texts, counts, strict=True) if n is None]
            exact = iter(self._encoded_lengths(rest) if rest else [])
            return [next(exact) if n is None else n + self._specials for n in counts]
        return self._encoded_lengths(texts)

    def _encoded_lengths(self, texts: list[str]) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return [len(ids) for ids in self.tokenizer(texts, return_attention_mask=False)["input_ids"]]
        truncation = backend.truncation  # transformers leaves the last call's setting in place
        if truncation is not None:
            backend.no_truncation()
        try:
            return [len(encoding.ids) for encoding in backend.encode_batch_fast(texts)]
        finally:
            if truncation is not None:
                backend.enable_truncation(**truncation)


class _WordPieceCounter:
    """Token counts of plain-ASCII texts for a tokenizer with BERT's normalizer, pre-tokenizer and a WordPiece model
    (medfusion's own and BERT's): the words found as :func:`~medfusion.data.tokenizer.word_counts` finds them, each
    word's pieces counted once by the model and remembered. ~20x faster than encoding; the same counts."""

    def __init__(self, model: models.WordPiece, lowercase: bool, added: list[str]) -> None:
        self.model, self.lowercase, self.added = model, lowercase, added
        self.pieces: dict[str, int] = {}

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> _WordPieceCounter | None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not (
            isinstance(backend.normalizer, normalizers.BertNormalizer)
            and isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
            and isinstance(backend.model, models.WordPiece)
        ):
            return None
        added = [token.content for token in backend.get_added_tokens_decoder().values()]
        return cls(backend.model, bool(backend.normalizer.lowercase), added)

    def count(self, text: str) -> int | None:
        """The text's tokens without special ones, None for a text this cannot count (not plain ASCII, or holding
        an added token such as ``[MASK]``, which the tokenizer keeps whole)."""
        if not PLAIN_ASCII.fullmatch(text) or any(token in text for token in self.added):
            return None
        total = 0
        for word in BERT_WORDS.findall(text.lower() if self.lowercase else text):
            pieces = self.pieces.get(word)
            if pieces is None:
                pieces = self.pieces[word] = len(self.model.tokenize(word))
            total += pieces
        return total
