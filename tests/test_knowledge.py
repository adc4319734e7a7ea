"""Knowledge-augmented narratives (``data.knowledge``): the best-matching passages are appended, by TF-IDF or BM25,
never one naming a class; the passage ids per sample are kept and written per run; bad corpora and options get
clear errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from data_helpers import build, write_layout
from test_cli import CONFIGS, small_run_args

from medfusion.cli import main
from medfusion.data import ConfigError, DataError
from medfusion.data.knowledge import KnowledgeSpec, Retriever, knowledge_spec

pytestmark = pytest.mark.usefixtures("one_thread")

PASSAGES = {
    "back": "Lesions of the back are often found late, as patients cannot see them.",
    "face": "Facial lesions are exposed to the sun for decades.",
    "upper": "The upper extremity is a common site in outdoor workers.",
}


def corpus(tmp_path: Path, passages: dict[str, str], name: str = "corpus.json") -> str:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(passages))
    else:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows(passages.items())
    return str(path)


@pytest.mark.parametrize("method", ["tfidf", "bm25"])
@pytest.mark.parametrize("name", ["corpus.json", "corpus.csv"])
def test_each_text_gets_its_best_matching_passages_appended(tmp_path: Path, method: str, name: str) -> None:
    retriever = Retriever(KnowledgeSpec(corpus(tmp_path, PASSAGES, name), top_k=1, method=method), ["a", "b"])
    found = retriever.retrieve(["Lesion on the back.", "Lesion on the face, sun damage.", None, "xyz qqq"])
    assert found.passages == [["back"], ["face"], [], []]  # no shared word: nothing appended
    assert found.texts == [f"Lesion on the back. {PASSAGES['back']}", f"Lesion on the face, sun damage. "
                           f"{PASSAGES['face']}", None, "xyz qqq"]  # fmt: skip
    two = Retriever(KnowledgeSpec(corpus(tmp_path, PASSAGES, name), top_k=2, method=method), ["a"])
    best = two.retrieve(["the back of the upper extremity"]).scores[0]
    assert len(best) == 2 and best[0] >= best[1] > 0


def test_bm25_scores_equal_a_hand_computation(tmp_path: Path) -> None:
    passages = {"p0": "red spot", "p1": "red red flat patch here", "p2": "blue"}
    retriever = Retriever(KnowledgeSpec(corpus(tmp_path, passages), method="bm25"), ["x"])
    lengths, mean = [2, 5, 1], 8 / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "red" is in 2 of 3 passages

    def bm25(tf: int, length: int) -> float:
        return idf * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * length / mean))

    expected = [bm25(1, lengths[0]), bm25(2, lengths[1]), 0.0]
    assert retriever.scores(["red red"])[0].tolist() == pytest.approx(expected)  # a query word counts once


def test_a_passage_naming_a_class_is_never_appended(tmp_path: Path) -> None:
    passages = {
        **PASSAGES,
        "leak": "On the back, a Melanoma in situ shows an irregular network.",
        "leak2": "Back lesions: basal-cell carcinoma is frequent.",
        "extra": "On the back, think of a dermatoscope first.",
    }
    spec = KnowledgeSpec(corpus(tmp_path, passages), top_k=3, exclude=("dermatoscope",))
    retriever = Retriever(spec, ["melanoma", "basal_cell carcinoma", "nevus"])
    assert sorted(retriever.excluded) == ["extra", "leak", "leak2"]
    assert retriever.retrieve(["A lesion on the back, back, back."]).passages[0][0] == "back"
    every = {pid for found in retriever.retrieve(list(passages.values())).passages for pid in found}
    assert every and not {"leak", "leak2", "extra"} & every


def test_a_corpus_whose_every_passage_names_a_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="names a class"):
        Retriever(KnowledgeSpec(corpus(tmp_path, {"p": "a typical nevus"})), ["nevus"])


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "does not exist"),
        ("id,body\np,x\n", "no ['text'] column"),
        ("id,text\np,x\np,y\n", "more than once"),
        ("id,text\np, \n", "Empty passages"),
    ],
)
def test_bad_corpora_are_refused_naming_the_file(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "corpus.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match="corpus") as err:
        Retriever(KnowledgeSpec(str(path)), ["a"])
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "options, needle",
    [({"top_k": 2}, "corpus"), ({"corpus": "c", "top_k": 0}, "top_k"), ({"corpus": "c", "method": "dense"}, "method")],
)
def test_bad_options_are_refused(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        knowledge_spec(options)


def test_the_datamodule_appends_passages_to_every_set_and_keeps_their_ids(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    knowledge = {"corpus": corpus(tmp_path, PASSAGES), "top_k": 1}
    dm = build(layout, text_json=None, text_template="Lesion on the {site}.", knowledge=knowledge)
    dm.setup("fit")
    train = dm.datasets["train"]
    site = {r["image_id"]: r["site"] for r in layout.rows}
    wanted = {"back": "back", "face": "face", "upper extremity": "upper"}
    rows = dm.retrieved_passages()
    assert {name for name, _, _ in rows} == {"train", "val", "test"}
    assert len(rows) == len(layout.rows) and all(ids == [wanted[site[i]]] for _, i, ids in rows)
    assert train.texts[0] == f"Lesion on the {site[train.ids[0]]}. {PASSAGES[wanted[site[train.ids[0]]]]}"
    assert "decades" in dm.tokenizer.get_vocab()  # the tokenizer learnt the passages' words too


def test_a_checkpoint_is_refused_with_other_passages_than_it_was_trained_with(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    options = {"text_json": None, "text_template": "Lesion on the {site}."}
    trained = build(layout, knowledge={"corpus": corpus(tmp_path, PASSAGES)}, **options)
    trained.setup("fit")
    state = trained.state_dict()
    assert len(state["knowledge"]["corpus_sha256"]) == 64 and "corpus" not in state["knowledge"]

    moved = tmp_path / "moved"
    moved.mkdir()
    same = build(layout, knowledge={"corpus": corpus(moved, PASSAGES)}, **options)  # same passages, other path
    same.setup("fit")
    same.load_state_dict(state)
    edited = build(layout, knowledge={"corpus": corpus(moved, {**PASSAGES, "face": "Faces."}, "b.json")}, **options)
    without = build(layout, **options)
    more = build(layout, knowledge={"corpus": corpus(tmp_path, PASSAGES), "top_k": 3}, **options)
    for other in (edited, without, more):
        other.setup("fit")
        with pytest.raises(ConfigError, match="knowledge"):
            other.load_state_dict(state)


def test_knowledge_needs_a_text_modality(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no text modality"):
        build(write_layout(tmp_path), text_json=None, knowledge={"corpus": corpus(tmp_path, PASSAGES)})


@pytest.mark.slow
def test_a_run_writes_the_passages_each_sample_got(tmp_path: Path) -> None:
    passages = {"p1": "A pigmented lesion with a network.", "p2": "Scaly plaques on sun-damaged skin."}
    knowledge = f"--data.knowledge={{corpus: {corpus(tmp_path, passages)}, top_k: 1, method: bm25}}"
    main(["fit", "--config", str(CONFIGS / "demo.yaml"), *small_run_args(tmp_path), knowledge,
          "--trainer.max_epochs=1"])  # fmt: skip
    written = list(csv.DictReader((tmp_path / "runs" / "demo" / "version_0" / "retrieved_passages.csv").open()))
    assert {r["set"] for r in written} == {"train", "val", "test"} and len(written) == 150
    assert {r["passages"] for r in written} <= {"p1", "p2", ""}
    assert len({r["id"] for r in written}) == 150
