"""Tests of the synthetic multimodal demo dataset (medfusion.data.demo), the files side: the layout it writes, image
sizes, determinism per seed, regeneration, patients and demographics, balanced and long-tailed class counts,
argument checks, and ensure_demo_data's cache (reuse, regeneration, foreign or incomplete folders, concurrent
callers, the default folder). Its cue structure is tested in test_demo_cues.py."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from demo_helpers import HEADER, N, load_image, read_header, read_metadata, read_reports
from PIL import Image

from medfusion.data.demo import (
    DEMO_CLASSES,
    LAB_COLUMN,
    LONG_TAIL_PROPORTIONS,
    default_cache_dir,
    ensure_demo_data,
    make_demo_data,
)
from medfusion.data.demo.generate import _class_counts
from medfusion.data.demo.reports import SEXES, SITES
from medfusion.data.demo.tabular import MISSING_RATES


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", num_samples=N, seed=0)


def test_layout(dataset: Path) -> None:
    for name in ("metadata.csv", "reports.json", "README.md", ".complete"):
        assert (dataset / name).is_file(), name
    assert read_header(dataset) == HEADER
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
    assert json.loads((dataset / ".complete").read_text())["views"] == 1
    assert LAB_COLUMN in (dataset / "README.md").read_text()


@pytest.mark.parametrize("size", [64, 40])
def test_images_rgb_of_requested_size(tmp_path: Path, size: int) -> None:
    root = make_demo_data(tmp_path, num_samples=12, image_size=size, seed=1)
    for row in read_metadata(root):
        with Image.open(root / "images" / f"{row['image_id']}.png") as im:
            assert im.mode == "RGB" and im.size == (size, size)


@pytest.mark.parametrize("views", [1, 2])
def test_deterministic_and_seed_dependent(tmp_path: Path, views: int) -> None:
    a = make_demo_data(tmp_path / "a", num_samples=30, seed=7, views=views)
    b = make_demo_data(tmp_path / "b", num_samples=30, seed=7, views=views)
    c = make_demo_data(tmp_path / "c", num_samples=30, seed=8, views=views)
    for name in ("metadata.csv", "reports.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    names = sorted(p.name for p in (a / "images").iterdir())
    assert len(names) == 30 * views
    assert all(np.array_equal(load_image(a, n), load_image(b, n)) for n in names)
    assert (a / "metadata.csv").read_bytes() != (c / "metadata.csv").read_bytes()
    assert (a / "reports.json").read_bytes() != (c / "reports.json").read_bytes()
    assert not any(np.array_equal(load_image(a, n), load_image(c, n)) for n in names)


def test_regenerating_into_same_dir_removes_stale_images(tmp_path: Path) -> None:
    make_demo_data(tmp_path, num_samples=20, seed=0, views=2)
    make_demo_data(tmp_path, num_samples=12, seed=0)
    assert len(list((tmp_path / "images").iterdir())) == 12 == len(read_metadata(tmp_path))
    assert not list((tmp_path / "images").glob("*_dermoscopic.png"))


def test_patients_share_label_and_demographics(dataset: Path) -> None:
    rows = read_metadata(dataset)
    by_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_patient[row["patient_id"]].append(row)
    assert all(len({r["label"] for r in rs}) == 1 for rs in by_patient.values())
    for column in ("age", "sex", "site"):  # cells may be missing per row, but never disagree
        assert all(len({r[column] for r in rs} - {""}) <= 1 for rs in by_patient.values()), column
    sizes = [len(rs) for rs in by_patient.values()]
    assert max(sizes) <= 3 and min(sizes) >= 1
    assert len(by_patient) < N  # some patients really have several images


def test_demographic_columns(dataset: Path) -> None:
    rows = read_metadata(dataset)
    for column, rate in MISSING_RATES.items():
        empty = sum(r[column] == "" for r in rows) / N
        assert 0 < empty < 2 * rate + 0.03, column
    assert {r["sex"] for r in rows} == {*SEXES, ""}
    assert {r["site"] for r in rows} - {""} <= set(SITES)
    assert all(18 <= int(r["age"]) < 90 for r in rows if r["age"])
    reports = read_reports(dataset)
    for r in rows:  # written in the report too, even where the cell is empty; the lab value never is
        assert r["sex"] in reports[r["image_id"]].lower() and r["site"] in reports[r["image_id"]]
        assert not r[LAB_COLUMN] or r[LAB_COLUMN] not in reports[r["image_id"]]


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


def test_bad_args_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_demo_data(tmp_path, num_samples=5)
    with pytest.raises(ValueError):
        make_demo_data(tmp_path, num_samples=59, long_tail=True)
    with pytest.raises(ValueError, match="views"):
        make_demo_data(tmp_path, num_samples=12, views=3)


def test_ensure_reuses_complete_and_regenerates_on_new_args(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "demo"
    assert ensure_demo_data(out, num_samples=18, image_size=16) == out
    marker = out / ".complete"
    stamp = (marker.stat().st_mtime_ns, (out / "metadata.csv").stat().st_mtime_ns)
    assert ensure_demo_data(str(out), num_samples=18, image_size=16, seed=0, views=1) == out
    assert (marker.stat().st_mtime_ns, (out / "metadata.csv").stat().st_mtime_ns) == stamp

    ensure_demo_data(out, num_samples=24, image_size=16)
    assert len(read_metadata(out)) == 24
    assert json.loads(marker.read_text())["num_samples"] == 24
    ensure_demo_data(out, num_samples=24, image_size=16, views=2)
    assert json.loads(marker.read_text())["views"] == 2 and len(list((out / "images").iterdir())) == 48
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
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "medfusion" / "demo"
