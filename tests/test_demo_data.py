"""Tests for the synthetic multimodal demo dataset (medfusion.data.demo)."""

from __future__ import annotations

import csv
import json
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfusion.data.demo import (
    CLASS_PATTERNS,
    DEMO_CLASSES,
    IMAGE_PATTERNS,
    LONG_TAIL_PROPORTIONS,
    TEXT_PATTERNS,
    _class_counts,
    default_cache_dir,
    ensure_demo_data,
    make_demo_data,
)

N = 300


def read_metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_reports(root: Path) -> dict[str, str]:
    return json.loads((root / "reports.json").read_text(encoding="utf-8"))


def load_image(root: Path, image_id: str) -> np.ndarray:
    with Image.open(root / "images" / f"{image_id}.png") as im:
        return np.asarray(im)


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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", num_samples=N, seed=0)


def test_layout(dataset: Path) -> None:
    for name in ("metadata.csv", "reports.json", "README.md", ".complete"):
        assert (dataset / name).is_file(), name
    with open(dataset / "metadata.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["image_id", "label", "patient_id"]
    rows = read_metadata(dataset)
    reports = read_reports(dataset)
    ids = [r["image_id"] for r in rows]
    assert len(rows) == N and len(set(ids)) == N
    assert all(re.fullmatch(r"DEMO_\d{6}", i) for i in ids)  # no file extension
    assert {r["label"] for r in rows} == set(DEMO_CLASSES)
    assert set(reports) == set(ids)
    assert all(isinstance(t, str) and t.strip() for t in reports.values())
    assert sorted(p.name for p in (dataset / "images").iterdir()) == sorted(f"{i}.png" for i in ids)
    assert json.loads((dataset / ".complete").read_text())["num_samples"] == N


@pytest.mark.parametrize("size", [64, 40])
def test_images_rgb_of_requested_size(tmp_path: Path, size: int) -> None:
    root = make_demo_data(tmp_path, num_samples=12, image_size=size, seed=1)
    for row in read_metadata(root):
        with Image.open(root / "images" / f"{row['image_id']}.png") as im:
            assert im.mode == "RGB" and im.size == (size, size)


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = make_demo_data(tmp_path / "a", num_samples=30, seed=7)
    b = make_demo_data(tmp_path / "b", num_samples=30, seed=7)
    c = make_demo_data(tmp_path / "c", num_samples=30, seed=8)
    for name in ("metadata.csv", "reports.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ids = [r["image_id"] for r in read_metadata(a)]
    assert all(np.array_equal(load_image(a, i), load_image(b, i)) for i in ids)
    assert (a / "reports.json").read_bytes() != (c / "reports.json").read_bytes()
    assert not any(np.array_equal(load_image(a, i), load_image(c, i)) for i in ids)


def test_regenerating_into_same_dir_removes_stale_images(tmp_path: Path) -> None:
    make_demo_data(tmp_path, num_samples=20, seed=0)
    make_demo_data(tmp_path, num_samples=12, seed=0)
    assert len(list((tmp_path / "images").iterdir())) == 12 == len(read_metadata(tmp_path))


def test_patients_have_one_label_and_few_images(dataset: Path) -> None:
    labels: dict[str, set[str]] = {}
    for row in read_metadata(dataset):
        labels.setdefault(row["patient_id"], set()).add(row["label"])
    assert all(len(v) == 1 for v in labels.values())
    sizes = Counter(r["patient_id"] for r in read_metadata(dataset))
    assert max(sizes.values()) <= 3 and min(sizes.values()) >= 1
    assert len(sizes) < N  # some patients really have several images


@pytest.mark.parametrize("num_samples", [6, 125, N])
def test_balanced_counts(tmp_path: Path, dataset: Path, num_samples: int) -> None:
    root = dataset if num_samples == N else make_demo_data(tmp_path, num_samples=num_samples, image_size=16)
    counts = Counter(r["label"] for r in read_metadata(root))
    assert sum(counts.values()) == num_samples and set(counts) == set(DEMO_CLASSES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_long_tail_proportions_look_like_ham10000() -> None:
    assert set(LONG_TAIL_PROPORTIONS) == set(DEMO_CLASSES)
    assert sum(LONG_TAIL_PROPORTIONS.values()) == pytest.approx(1.0)
    assert max(LONG_TAIL_PROPORTIONS, key=LONG_TAIL_PROPORTIONS.get) == "nv"
    assert 0.6 < LONG_TAIL_PROPORTIONS["nv"] < 0.72
    assert 0.008 < LONG_TAIL_PROPORTIONS["df"] < 0.016


@pytest.mark.parametrize("num_samples", [60, 120])
def test_long_tail_counts(tmp_path: Path, num_samples: int) -> None:
    root = make_demo_data(tmp_path, num_samples=num_samples, image_size=16, long_tail=True)
    counts = Counter(r["label"] for r in read_metadata(root))
    assert sum(counts.values()) == num_samples and set(counts) == set(DEMO_CLASSES)
    assert counts.most_common(1)[0][0] == "nv" or num_samples == 60  # at 60 every class is pinned to 10
    assert max(counts.values()) >= 0.5 * num_samples or num_samples == 60
    assert min(counts.values()) >= max(10, 0.01 * num_samples)


@pytest.mark.parametrize("num_samples", [2000, 10015])
def test_long_tail_large_follows_proportions(num_samples: int) -> None:
    counts = _class_counts(num_samples, long_tail=True)
    assert sum(counts.values()) == num_samples
    for c in DEMO_CLASSES:
        assert counts[c] / num_samples == pytest.approx(LONG_TAIL_PROPORTIONS[c], abs=0.01)


def test_too_few_samples_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_demo_data(tmp_path, num_samples=5)
    with pytest.raises(ValueError):
        make_demo_data(tmp_path, num_samples=59, long_tail=True)


def test_class_structure_needs_both_modalities() -> None:
    assert set(CLASS_PATTERNS) == set(DEMO_CLASSES)
    assert len(set(CLASS_PATTERNS.values())) == len(DEMO_CLASSES)  # (image, text) identifies the class
    image_counts = Counter(p for p, _ in CLASS_PATTERNS.values())
    text_counts = Counter(q for _, q in CLASS_PATTERNS.values())
    assert set(image_counts) == set(IMAGE_PATTERNS) and set(image_counts.values()) == {2}
    assert set(text_counts) == set(TEXT_PATTERNS) and set(text_counts.values()) == {2}


def test_reports_never_name_the_class(dataset: Path) -> None:
    for text in read_reports(dataset).values():
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert not words & set(DEMO_CLASSES), text


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


def text_features(root: Path, rows: list[dict[str, str]]) -> np.ndarray:
    reports = read_reports(root)
    return tf_idf([reports[r["image_id"]] for r in rows])


def image_features(root: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """Crude colour statistics of the central region: mean, std and share of bluish pixels."""
    feats = []
    for r in rows:
        centre = load_image(root, r["image_id"]).astype(np.float64)[20:44, 20:44].reshape(-1, 3)
        bluish = (centre[:, 2] > centre[:, 0]).mean()
        feats.append(np.concatenate([centre.mean(0), centre.std(0), [bluish]]))
    x = np.array(feats)
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def test_text_identifies_text_pattern_but_not_class(dataset: Path) -> None:
    rows = read_metadata(dataset)
    x = text_features(dataset, rows)
    labels = [r["label"] for r in rows]
    assert nearest_centroid_accuracy(x, [CLASS_PATTERNS[y][1] for y in labels]) > 0.9
    assert nearest_centroid_accuracy(x, labels) <= 0.65
    assert len(set(read_reports(dataset).values())) > 0.95 * N  # varied texts, not a handful of templates


def test_image_statistic_identifies_image_pattern_but_not_class(dataset: Path) -> None:
    rows = read_metadata(dataset)
    x = image_features(dataset, rows)
    assert nearest_centroid_accuracy(x, [CLASS_PATTERNS[r["label"]][0] for r in rows]) > 0.7
    assert nearest_centroid_accuracy(x, [r["label"] for r in rows]) <= 0.65


def test_both_modalities_together_identify_the_class(dataset: Path) -> None:
    rows = read_metadata(dataset)
    labels = [r["label"] for r in rows]
    image_pred = nearest_centroid_predict(image_features(dataset, rows), [CLASS_PATTERNS[y][0] for y in labels])
    text_pred = nearest_centroid_predict(text_features(dataset, rows), [CLASS_PATTERNS[y][1] for y in labels])
    by_pair = {pq: c for c, pq in CLASS_PATTERNS.items()}
    pred = [by_pair.get(pq) for pq in zip(image_pred.tolist(), text_pred.tolist(), strict=True)]
    assert np.mean(np.array(pred) == np.array(labels)[1::2]) > 0.75


def test_ensure_reuses_complete_and_regenerates_on_new_args(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "demo"
    assert ensure_demo_data(out, num_samples=18, image_size=16) == out
    marker = out / ".complete"
    stamp = (marker.stat().st_mtime_ns, (out / "metadata.csv").stat().st_mtime_ns)
    assert ensure_demo_data(str(out), num_samples=18, image_size=16, seed=0) == out
    assert (marker.stat().st_mtime_ns, (out / "metadata.csv").stat().st_mtime_ns) == stamp

    ensure_demo_data(out, num_samples=24, image_size=16)
    assert len(read_metadata(out)) == 24
    assert json.loads(marker.read_text())["num_samples"] == 24
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no temp or stale dirs left behind


def test_ensure_replaces_incomplete_dir(tmp_path: Path) -> None:
    make_demo_data(tmp_path / "d", num_samples=12, image_size=16)
    (tmp_path / "d" / ".complete").unlink()  # as if the run was interrupted
    ensure_demo_data(tmp_path / "d", num_samples=12, image_size=16)
    assert (tmp_path / "d" / ".complete").is_file()


def test_ensure_refuses_foreign_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ensure_demo_data(tmp_path / "d", num_samples=12, image_size=16)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_ensure_rejects_unknown_args(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ensure_demo_data(tmp_path / "d", num_sample=12)


def test_ensure_concurrent_callers(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_demo_data(out, num_samples=30, image_size=16, seed=3))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [out] * 4
    assert len(read_metadata(out)) == 30 == len(list((out / "images").iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDFUSION_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "demo"
    monkeypatch.delenv("MEDFUSION_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "medfusion" / "demo"
