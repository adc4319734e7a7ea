"""Token ids computed when a sample is read, not all at set-up: a million texts cost a minute to tokenize and
~1 KB each as Python lists, so the dataset keeps the texts and tokenizes each one in the loader's workers."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import models
from transformers import PreTrainedTokenizerBase

from medfusion.runs.progress import track


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

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> list[int] | None:  # type: ignore[override]
        text = self.texts[index]
        if text is None:
            return None
        encoded = self.tokenizer(
            text,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

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
        """Untruncated token counts, special tokens included: by the Rust tokenizer directly where there is one
        (without the offsets and Python objects per token that the transformers call builds, 1.5x faster)."""
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
