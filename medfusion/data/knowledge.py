"""Knowledge-augmented narratives: each sample's text followed by the passages of a user's corpus that match it best.

``data.knowledge: {corpus: FILE, top_k: 2, method: tfidf}`` appends to every text (typically a narrative from
``data.text_template``) its ``top_k`` passages by TF-IDF cosine similarity (scikit-learn's ``TfidfVectorizer``) or
Okapi BM25 (``k1 = 1.5``, ``b = 0.75``, on the same vocabulary), the query being the text itself. The corpus is a
JSON object ``{passage_id: passage}`` or a CSV with ``id`` and ``text`` columns. Passages that name a class
(any class name, case-insensitive, ``_`` and ``-`` read as spaces, or a word of ``exclude``) are dropped before
indexing: a passage that names the diagnosis would hand the label to the model (leakage). A passage sharing no
word with the text is never appended. The passages each sample got are in :attr:`Records.passages` and written per
run to ``retrieved_passages.csv``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from medfusion.data.errors import ConfigError, DataError, raise_for_rows
from medfusion.data.texts import read_text_json

Method = Literal["tfidf", "bm25"]
BM25_K1, BM25_B = 1.5, 0.75


@dataclass(frozen=True)
class KnowledgeSpec:
    """``data.knowledge`` checked: the corpus file, passages per text, the scoring, extra words that exclude."""

    corpus: str
    top_k: int = 2
    method: Method = "tfidf"
    exclude: tuple[str, ...] = field(default_factory=tuple)


def knowledge_spec(options: dict[str, Any] | None) -> KnowledgeSpec | None:
    """``data.knowledge`` as a :class:`KnowledgeSpec`, or a :class:`ConfigError` naming what is wrong."""
    if options is None:
        return None
    known = list(KnowledgeSpec.__dataclass_fields__)
    if not isinstance(options, dict) or "corpus" not in options or set(options) - set(known):
        raise ConfigError(f"data.knowledge must be a mapping with corpus and keys among {known}, got {options!r}")
    spec = KnowledgeSpec(**{**options, "exclude": tuple(options.get("exclude") or ())})
    if not (isinstance(spec.top_k, int) and spec.top_k >= 1):
        raise ConfigError(f"data.knowledge.top_k must be a whole number >= 1, got {spec.top_k!r}")
    if spec.method not in ("tfidf", "bm25"):
        raise ConfigError(f"data.knowledge.method must be 'tfidf' or 'bm25', got {spec.method!r}")
    return spec


def knowledge_state(spec: KnowledgeSpec | None) -> dict[str, Any] | None:
    """What a checkpoint keeps of ``data.knowledge``: the scoring and the corpus's SHA-256 (not its path), so that
    a model is never tested or used with other passages than it was trained with."""
    if spec is None:
        return None
    path = Path(spec.corpus).expanduser()
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return {"corpus_sha256": digest, "top_k": spec.top_k, "method": spec.method, "exclude": sorted(spec.exclude)}


def read_corpus(path: str | Path) -> dict[str, str]:
    """The passages ``{id: text}`` of a JSON object or a CSV with ``id`` and ``text`` columns; a
    :class:`DataError` names a missing or malformed file, missing columns, and empty or repeated passage ids."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".json":
        passages = read_text_json(path)
    else:
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise DataError(f"Knowledge corpus {path} does not exist. Fix: set data.knowledge.corpus.") from None
        except IsADirectoryError:
            raise DataError(f"Knowledge corpus {path} is a folder. Fix: name a .json or .csv file.") from None
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise DataError(f"Knowledge corpus {path} is not a readable CSV ({err}). Fix: write id,text rows.") from err
        missing = [c for c in ("id", "text") if c not in table.columns]
        if missing:
            raise DataError(
                f"Knowledge corpus {path} has no {missing} column(s) (columns: {list(table.columns)}). Fix: give it "
                "an id and a text column, or use a JSON {id: passage} file."
            )
        repeated = table.index[table["id"].duplicated(keep=False)].tolist()
        raise_for_rows("Passage ids given more than once", path, repeated,
                       [f"id {table['id'][r]!r}" for r in repeated], "give each passage its own id.")  # fmt: skip
        passages = dict(zip(table["id"], table["text"], strict=True))
    empty = [pid for pid, text in passages.items() if not text.strip()]
    if empty:
        raise DataError(f"Empty passages in {path}: ids {empty[:10]}. Fix: give them a text or remove them.")
    if not passages:
        raise DataError(f"Knowledge corpus {path} holds no passage. Fix: add id,text rows.")
    return passages


def _mentions(words: Sequence[str]) -> re.Pattern[str]:
    """A pattern finding any of ``words`` as whole words, case-insensitive, ``_`` and ``-`` as spaces."""
    forms = {re.sub(r"[\s_-]+", " ", w).strip().lower() for w in words if w.strip()}
    alternatives = "|".join(r"[\s_-]+".join(map(re.escape, f.split(" "))) for f in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


@dataclass
class Retrieval:
    """Per text: the texts with their passages appended, the passage ids and their scores."""

    texts: list[str | None]
    passages: list[list[str]]
    scores: list[list[float]]


class Retriever:
    """The corpus less the passages naming a class, indexed for ``spec.method``; :meth:`retrieve` augments texts.

    Args:
        spec: the checked ``data.knowledge``.
        class_names: the classes whose mention drops a passage.
    """

    def __init__(self, spec: KnowledgeSpec, class_names: Sequence[str]) -> None:
        self.spec = spec
        passages = read_corpus(spec.corpus)
        naming = _mentions([*class_names, *spec.exclude])
        self.excluded = [pid for pid, text in passages.items() if naming.search(text)]
        kept = {pid: text for pid, text in passages.items() if pid not in set(self.excluded)}
        if not kept:
            raise DataError(
                f"Every passage of {spec.corpus} names a class ({list(class_names)}) or an excluded word, so none can "
                "be used without handing the label to the model. Fix: give passages that describe findings, not "
                "diagnoses."
            )
        self.ids, self.passages = list(kept), list(kept.values())
        if spec.method == "tfidf":
            self._vectorizer: Any = TfidfVectorizer(sublinear_tf=True)
            self._index = self._vectorizer.fit_transform(self.passages)
        else:
            self._vectorizer = CountVectorizer()
            counts = self._vectorizer.fit_transform(self.passages).tocsr().astype(float)
            lengths = np.asarray(counts.sum(axis=1)).ravel()
            frequency = np.bincount(counts.indices, minlength=counts.shape[1])
            self._idf = np.log1p((len(lengths) - frequency + 0.5) / (frequency + 0.5))
            norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / lengths.mean())
            saturated = counts.copy()
            saturated.data = counts.data * (BM25_K1 + 1) / (counts.data + np.repeat(norm, np.diff(counts.indptr)))
            self._index = saturated

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), passages]``: TF-IDF cosine, or the BM25 score of each passage for each text as query."""
        query = self._vectorizer.transform(texts)
        if self.spec.method == "tfidf":
            return (query @ self._index.T).toarray()
        present = sparse.csr_matrix((query > 0).astype(float).multiply(self._idf))  # each query word once
        return (present @ self._index.T).toarray()

    def retrieve(self, texts: Sequence[str | None]) -> Retrieval:
        """Each text followed by its ``top_k`` passages (best first, ties by corpus order; none without a shared
        word); None texts stay None and get none."""
        given = [i for i, t in enumerate(texts) if t is not None]
        out = Retrieval(list(texts), [[] for _ in texts], [[] for _ in texts])
        if not given:
            return out
        scores = self.scores([texts[i] for i in given])
        for row, i in enumerate(given):
            order = np.argsort(-scores[row], kind="stable")[: self.spec.top_k]
            best = [j for j in order if scores[row, j] > 0]
            out.passages[i] = [self.ids[j] for j in best]
            out.scores[i] = [float(scores[row, j]) for j in best]
            out.texts[i] = " ".join([texts[i], *(self.passages[j] for j in best)])  # type: ignore[list-item]
        return out
