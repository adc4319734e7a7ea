"""Tests of the demo dataset's cue structure (medfusion.data.demo): any two modalities' patterns identify the
class and one narrows it to two, the optimal accuracy of every subset of modalities (checked on the generated cases),
where the cues are blank, that the texts and images show their patterns but not the class to crude readers, and the
two-view variant (its layout, and the image cue split between the dermoscopic and the clinical view)."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from demo_helpers import HEADER, N, load_image, read_header, read_metadata, read_reports
from PIL import Image

from medfusion.data.demo import (
    CLASS_PATTERNS,
    DEMO_CLASSES,
    IMAGE_PATTERNS,
    LAB_COLUMN,
    LONG_TAIL_PROPORTIONS,
    MODALITIES,
    TABULAR_PATTERNS,
    TEXT_PATTERNS,
    VIEWS,
    demo_cues,
    make_demo_data,
    optimal_accuracy,
)
from medfusion.data.demo.reports import SYMPTOM_PHRASES
from medfusion.data.demo.tabular import LAB_RANGES, lab_pattern

N2 = 180  # cases of the two-view dataset
PAIRS = list(itertools.combinations(MODALITIES, 2))


def nearest_centroid_predict(features: np.ndarray, targets: list[str]) -> np.ndarray:
    """Fit class centroids on the even rows, predict the odd rows."""
    y = np.array(targets)
    train = np.arange(len(y)) % 2 == 0
    names = sorted(set(y[train]))
    centroids = np.stack([features[train & (y == n)].mean(0) for n in names])
    dists = ((features[~train][:, None, :] - centroids[None]) ** 2).sum(-1)
    return np.array(names)[dists.argmin(1)]


def nearest_centroid_accuracy(features: np.ndarray, targets: list[str]) -> float:
    return float((nearest_centroid_predict(features, targets) == np.array(targets)[1::2]).mean())


def text_pattern_of(report: str) -> str | None:
    """The text pattern whose symptom phrases the report uses (None: none); fails on a mix of patterns."""
    found = {p for p, phrases in SYMPTOM_PHRASES.items() if any(ph in report for ph in phrases)}
    assert len(found) <= 1, report
    return found.pop() if found else None


def empirical_optimal_accuracy(observed: list[tuple], labels: list[str]) -> float:
    """Accuracy of the best classifier of these cases that sees only ``observed`` (majority label per value)."""
    by_value: dict[tuple, Counter] = defaultdict(Counter)
    for value, label in zip(observed, labels, strict=True):
        by_value[value][label] += 1
    return sum(c.most_common(1)[0][1] for c in by_value.values()) / len(labels)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", num_samples=N, seed=0)


@pytest.fixture(scope="module")
def two_views(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo2") / "data", num_samples=N2, seed=0, views=2)


def test_any_two_patterns_identify_the_class_and_one_narrows_to_two() -> None:
    assert set(CLASS_PATTERNS) == set(DEMO_CLASSES)
    for k, patterns in enumerate((IMAGE_PATTERNS, TEXT_PATTERNS, TABULAR_PATTERNS)):
        counts = Counter(triple[k] for triple in CLASS_PATTERNS.values())
        assert set(counts) == set(patterns) and set(counts.values()) == {2}
    for i, j in itertools.combinations(range(3), 2):
        assert len({(t[i], t[j]) for t in CLASS_PATTERNS.values()}) == len(DEMO_CLASSES)


def test_optimal_accuracy_table() -> None:
    for m in MODALITIES:
        assert optimal_accuracy([m]) == pytest.approx(5 / 12)
    for pair in PAIRS:
        assert optimal_accuracy(pair) == pytest.approx(3 / 4)
    assert optimal_accuracy(MODALITIES) == pytest.approx(1.0)
    both = ("dermoscopic", "clinical")
    assert optimal_accuracy(both, views=2) == pytest.approx(5 / 12)  # both views together: the image modality
    assert optimal_accuracy(["image"], views=2) == pytest.approx(5 / 12)
    for view in VIEWS:
        assert optimal_accuracy([view], views=2) == pytest.approx(1 / 3)
        assert optimal_accuracy([view, "text"], views=2) == pytest.approx(23 / 36)
        assert optimal_accuracy([view, "text", "tabular"], views=2) == pytest.approx(11 / 12)
    assert optimal_accuracy([*both, "text", "tabular"], views=2) == pytest.approx(1.0)
    skewed = optimal_accuracy(["image"], proportions=LONG_TAIL_PROPORTIONS)
    assert skewed > 5 / 12  # a majority class helps a single modality


def observed_cues(root: Path, rows: list[dict[str, str]], views: int = 1) -> list[dict[str, str | None]]:
    """Each case's cues as read from the files where they can be (text: symptom phrases, tabular: the lab value),
    from the generator's ground truth for the images; the text and tabular ones must agree with that truth."""
    truth = demo_cues(len(rows), seed=0, views=views)
    reports = read_reports(root)
    observed = []
    for r in rows:
        cue = truth[r["image_id"]]
        seen = cue | {"text": text_pattern_of(reports[r["image_id"]]), "tabular": lab_pattern(r[LAB_COLUMN])}
        assert seen == cue, r["image_id"]
        assert {p for p in cue.values() if p} <= set(CLASS_PATTERNS[r["label"]])
        observed.append(seen)
    return observed


def test_empirical_cue_structure_matches_optimal_accuracy(dataset: Path) -> None:
    rows = read_metadata(dataset)
    labels = [r["label"] for r in rows]
    cues = observed_cues(dataset, rows)
    subsets = [(m,) for m in MODALITIES] + PAIRS + [MODALITIES]
    for subset in subsets:
        empirical = empirical_optimal_accuracy([tuple(c[s] for s in subset) for c in cues], labels)
        assert empirical == pytest.approx(optimal_accuracy(subset), abs=0.05), subset
    assert empirical == 1.0  # the full set always identifies the class


def test_one_uninformative_modality_in_three_quarters_of_each_class(dataset: Path) -> None:
    rows = read_metadata(dataset)
    cues = observed_cues(dataset, rows)
    for label in DEMO_CLASSES:
        blanks = Counter(
            tuple(m for m in MODALITIES if c[m] is None) for r, c in zip(rows, cues, strict=True) if r["label"] == label
        )
        assert set(blanks) == {(), ("image",), ("text",), ("tabular",)}  # never two cues missing
        assert max(blanks.values()) - min(blanks.values()) <= 1  # a quarter each (stratified)


def test_lab_value_missing_exactly_where_no_tabular_cue(dataset: Path) -> None:
    rows = read_metadata(dataset)
    truth = demo_cues(N, seed=0)
    for r in rows:
        tabular = truth[r["image_id"]]["tabular"]
        assert (r[LAB_COLUMN] == "") == (tabular is None), r
        if tabular is not None:
            assert re.fullmatch(r"\d{3}\.\d", r[LAB_COLUMN]), r
            low, high = LAB_RANGES[CLASS_PATTERNS[r["label"]][2]]
            assert low <= float(r[LAB_COLUMN]) <= high
    assert sum(r[LAB_COLUMN] == "" for r in rows) == pytest.approx(N / 4, abs=6)


def test_reports_never_name_the_class_or_the_lab(dataset: Path) -> None:
    for text in read_reports(dataset).values():
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert not words & {*DEMO_CLASSES, "ldh", "lactate"}, text


def tf_idf(texts: list[str]) -> np.ndarray:
    """L2-normalised tf-idf bag-of-words vectors (lower-cased alphabetic words)."""
    tokens = [re.findall(r"[a-z]+", t.lower()) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for ts in tokens for w in ts}))}
    x = np.zeros((len(texts), len(vocab)))
    for row, ts in enumerate(tokens):
        for w in ts:
            x[row, vocab[w]] += 1
    x *= np.log(len(texts) / (x > 0).sum(0))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def image_features(root: Path, names: list[str]) -> np.ndarray:
    """Crude colour statistics of the central region: mean, std and share of bluish pixels."""
    feats = []
    for name in names:
        image = load_image(root, name).astype(np.float64)
        s = image.shape[0]
        centre = image[s * 5 // 16 : s * 11 // 16, s * 5 // 16 : s * 11 // 16].reshape(-1, 3)
        bluish = (centre[:, 2] > centre[:, 0]).mean()
        feats.append(np.concatenate([centre.mean(0), centre.std(0), [bluish]]))
    x = np.array(feats)
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def test_text_identifies_text_pattern_but_not_class(dataset: Path) -> None:
    rows = read_metadata(dataset)
    reports = read_reports(dataset)
    x = tf_idf([reports[r["image_id"]] for r in rows])
    truth = demo_cues(N, seed=0)
    labels = [r["label"] for r in rows]
    informative = np.array([truth[r["image_id"]]["text"] is not None for r in rows])
    patterns = [str(truth[r["image_id"]]["text"]) for r in rows]  # "None" for the reports without symptoms
    assert nearest_centroid_accuracy(x, patterns) > 0.9
    assert nearest_centroid_accuracy(x[informative], [y for y, i in zip(labels, informative, strict=True) if i]) < 0.65
    blank = [y for y, i in zip(labels, informative, strict=True) if not i]
    assert nearest_centroid_accuracy(x[~informative], blank) < 0.4  # chance is 1/6
    assert len(set(reports.values())) > 0.95 * N  # varied texts, not a handful of templates


def test_image_statistic_identifies_image_pattern_and_featureless_images_carry_no_class(dataset: Path) -> None:
    rows = read_metadata(dataset)
    truth = demo_cues(N, seed=0)
    x = image_features(dataset, [r["image_id"] for r in rows])
    looks = [str(truth[r["image_id"]]["image"]) for r in rows]  # "None" for a featureless lesion
    assert nearest_centroid_accuracy(x, looks) > 0.7
    informative = np.array([look != "None" for look in looks])
    labels = np.array([r["label"] for r in rows])
    assert nearest_centroid_accuracy(x[informative], list(labels[informative])) < 0.65
    assert nearest_centroid_accuracy(x[~informative], list(labels[~informative])) < 0.4  # chance is 1/6


def test_three_modalities_beat_every_pair_with_crude_readers(dataset: Path) -> None:
    """Read each case's cues with crude readers (nearest centroid for images and reports, the range for the lab
    value) and decode the class from the cues they find: all three modalities beat the best pair clearly."""
    rows = read_metadata(dataset)
    truth = demo_cues(N, seed=0)
    reports = read_reports(dataset)
    image_pred = nearest_centroid_predict(
        image_features(dataset, [r["image_id"] for r in rows]), [str(truth[r["image_id"]]["image"]) for r in rows]
    )
    text_pred = nearest_centroid_predict(
        tf_idf([reports[r["image_id"]] for r in rows]), [str(truth[r["image_id"]]["text"]) for r in rows]
    )
    test_rows = rows[1::2]
    read = [
        {"image": i, "text": t, "tabular": str(lab_pattern(r[LAB_COLUMN]))}
        for i, t, r in zip(image_pred.tolist(), text_pred.tolist(), test_rows, strict=True)
    ]

    def accuracy(subset: tuple[str, ...]) -> float:  # the class agreeing with most cues read, ties to the first
        pred = [
            max(DEMO_CLASSES, key=lambda c: sum(CLASS_PATTERNS[c][MODALITIES.index(m)] == cue[m] for m in subset))
            for cue in read
        ]
        return float(np.mean([p == r["label"] for p, r in zip(pred, test_rows, strict=True)]))

    full = accuracy(MODALITIES)
    assert full > 0.85
    assert max(accuracy(pair) for pair in PAIRS) < full - 0.1


def test_two_view_layout(two_views: Path) -> None:
    assert read_header(two_views) == [*HEADER, "dermoscopic_image", "clinical_image"]
    rows = read_metadata(two_views)
    assert len(rows) == N2 and json.loads((two_views / ".complete").read_text())["views"] == 2
    expected = []
    for r in rows:
        assert r["dermoscopic_image"] == f"{r['image_id']}_dermoscopic.png"
        assert r["clinical_image"] == f"{r['image_id']}_clinical.png"
        expected += [r["dermoscopic_image"], r["clinical_image"]]
    assert sorted(p.name for p in (two_views / "images").iterdir()) == sorted(expected)
    with Image.open(two_views / "images" / rows[0]["clinical_image"]) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    assert "clinical_image" in (two_views / "README.md").read_text()


def test_two_views_split_the_image_cue(two_views: Path) -> None:
    rows = read_metadata(two_views)
    labels = [r["label"] for r in rows]
    cues = observed_cues(two_views, rows, views=2)
    shown = Counter((c["dermoscopic"] is not None, c["clinical"] is not None) for c in cues if c["image"])
    assert set(shown) == {(True, True), (True, False), (False, True)}  # a present image cue is always in a view
    assert max(shown.values()) - min(shown.values()) <= 8  # a third each (stratified per class)
    assert all(c["dermoscopic"] is None and c["clinical"] is None for c in cues if c["image"] is None)
    for subset in [("dermoscopic",), ("clinical", "text"), ("dermoscopic", "text", "tabular"), (*VIEWS, "text")]:
        empirical = empirical_optimal_accuracy([tuple(c[s] for s in subset) for c in cues], labels)
        assert empirical == pytest.approx(optimal_accuracy(subset, views=2), abs=0.06), subset
    one_view = empirical_optimal_accuracy([(c["dermoscopic"], c["text"], c["tabular"]) for c in cues], labels)
    both = empirical_optimal_accuracy([(c["image"], c["text"], c["tabular"]) for c in cues], labels)
    assert both == 1.0 and one_view < 0.95


def test_each_view_shows_the_image_pattern_where_it_has_the_cue(two_views: Path) -> None:
    rows = read_metadata(two_views)
    cues = demo_cues(N2, seed=0, views=2)
    for view in VIEWS:
        x = image_features(two_views, [r[f"{view}_image"] for r in rows])
        looks = [str(cues[r["image_id"]][view]) for r in rows]
        assert nearest_centroid_accuracy(x, looks) > 0.7, view
        blank = np.array([look == "None" for look in looks])
        assert nearest_centroid_accuracy(x[blank], [r["label"] for r, b in zip(rows, blank, strict=True) if b]) < 0.4
