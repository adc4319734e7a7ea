"""Token ids computed as samples are read: the same ids as tokenizing up front (truncated to ``max_length``), and
the count of texts over ``max_length`` exact, whichever way it is counted (word by word, by byte bound, encoded)."""

from __future__ import annotations

import random
import string

import pytest

from medfusion.data.token_ids import TokenIds, _WordPieceCounter
from medfusion.data.tokenizer import train_wordpiece

WORDS = ["lesion", "irregular", "border", "pigment", "asymmetric", "nodule", "x", "blue-white", "veil", "2.5mm"]


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 60))]
        if i % 5 == 0:  # any printable ASCII, punctuation and unseen characters included
            words += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 30)))]
        if i % 7 == 0:
            words += ["naïve café", "[MASK]"][i % 2 :]  # not plain ASCII; an added token kept whole
        texts.append(" ".join(words))
    return texts


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(random_texts(200, seed=1), vocab_size=300)


@pytest.mark.parametrize("max_length", [8, 32, 64])
def test_lazy_ids_equal_eager_truncated_ids(tokenizer, max_length: int) -> None:
    texts = [*random_texts(50), None]
    lazy = TokenIds(tokenizer, texts, max_length)
    eager = tokenizer(texts[:-1], truncation=True, max_length=max_length)["input_ids"]
    assert [lazy[i] for i in range(len(texts))] == [*eager, None]
    assert len(lazy) == len(texts)


@pytest.mark.parametrize("max_length", [8, 32, 64, 512])
def test_truncated_count_is_exact(tokenizer, max_length: int) -> None:
    texts = [*random_texts(300), None]
    lengths = [len(ids) for ids in tokenizer([t for t in texts if t is not None])["input_ids"]]
    expected = sum(n > max_length for n in lengths)
    assert TokenIds(tokenizer, texts, max_length).count_truncated() == expected


def test_word_by_word_counts_equal_the_tokenizers(tokenizer) -> None:
    counter = _WordPieceCounter.of(tokenizer)
    assert counter is not None
    texts = random_texts(300, seed=3)
    counted = [counter.count(t) for t in texts]
    specials = tokenizer.num_special_tokens_to_add()
    for text, n in zip(texts, counted, strict=True):
        if n is not None:
            assert n + specials == len(tokenizer(text)["input_ids"]), text
    assert sum(n is None for n in counted) >= 40  # the non-ASCII and [MASK] texts went to the tokenizer
