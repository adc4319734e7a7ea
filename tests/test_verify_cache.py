"""The up-front image check at scale: files verified by an earlier run and unchanged since are skipped, a touched or
replaced one is checked again; many files are checked over worker processes with the same verdicts; under DDP the
check runs on rank zero and its outcome (or its error) reaches every rank."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from data_helpers import build, write_layout
from PIL import Image

import medfusion.data.verify as verify
from medfusion.data import DataError
from medfusion.data.distributed import once_per_job
from medfusion.data.verify import VerifiedFiles, verify_images


def write_pngs(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:04d}.png"
        Image.fromarray(np.full((4, 4, 3), i % 256, np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths decoded by the check (in the main process), in order."""
    seen: list[str] = []
    real = verify.check_image

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(verify, "check_image", counting)
    return seen


def test_second_run_checks_nothing_and_a_touched_file_is_checked_again(tmp_path: Path, checks: list[str]) -> None:
    paths = write_pngs(tmp_path / "images", 5)
    cache = VerifiedFiles(tmp_path / "cache")
    verify_images(paths, "samples.csv", cache)
    assert checks == paths
    checks.clear()
    verify_images(paths, "samples.csv", VerifiedFiles(tmp_path / "cache"))  # a new run, same record
    assert checks == []
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: same bytes, new time
    verify_images(paths, "samples.csv", cache)
    assert checks == [paths[2]]


def test_a_symlink_pointed_at_another_file_of_the_same_size_and_time_is_checked_again(tmp_path: Path) -> None:
    good, other = write_pngs(tmp_path / "images", 2)
    Path(other).write_bytes(os.urandom(os.path.getsize(good)))  # corrupt, same size
    stat = os.stat(good)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same modification time
    link = tmp_path / "images" / "link.png"
    link.symlink_to(good)
    cache = VerifiedFiles(tmp_path / "cache")
    verify_images([str(link)], "samples.csv", cache)
    link.unlink()
    link.symlink_to(other)
    with pytest.raises(DataError, match="Unreadable image files"):
        verify_images([str(link)], "samples.csv", cache)


def test_a_file_replaced_by_a_bad_one_is_caught_and_never_recorded(tmp_path: Path, checks: list[str]) -> None:
    paths = write_pngs(tmp_path / "images", 4)
    cache = VerifiedFiles(tmp_path / "cache")
    verify_images(paths, "samples.csv", cache)
    Path(paths[1]).write_bytes(b"not an image at all")
    checks.clear()
    for _ in range(2):  # the bad file is checked (and fails) every run
        with pytest.raises(DataError, match=r"(?s)Unreadable image files.*line 3: .*img0001\.png"):
            verify_images(paths, "samples.csv", cache)
    assert checks == [paths[1], paths[1]]
    assert cache.unverified(paths) == [(1, verify.stamp(paths[1]))]  # the bad file's bytes never passed


def test_many_files_are_checked_over_processes_with_the_same_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_pngs(tmp_path / "images", verify._PARALLEL_FROM + 40)
    bad = {7, len(paths) - 1}
    for i in bad:
        Path(paths[i]).write_bytes(os.urandom(200))
    with pytest.raises(DataError) as parallel:
        verify_images(paths, "samples.csv")
    monkeypatch.setattr(verify, "worker_count", lambda count: 0)
    with pytest.raises(DataError) as serial:
        verify_images(paths, "samples.csv")
    assert str(parallel.value) == str(serial.value)
    assert "(2 row(s))" in str(parallel.value) and all(f"img{i:04d}.png" in str(parallel.value) for i in bad)


def test_processes_are_used_for_many_files_only() -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert verify.worker_count(10) == 0
    assert verify.worker_count(10_000) == (min(8, cpus) if cpus > 1 else 0)


def test_an_unusable_record_warns_and_still_checks(tmp_path: Path, checks: list[str]) -> None:
    paths = write_pngs(tmp_path / "images", 3)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(UserWarning, match="checking every image") as caught:
        verify_images(paths, "samples.csv", VerifiedFiles(blocker))
    assert checks == paths
    assert len([w for w in caught if "verified.sqlite" in str(w.message)]) == 1  # warned once, not again on writing


def test_datamodule_records_in_cache_dir_and_cache_false_records_nothing(tmp_path: Path, checks: list[str]) -> None:
    layout = write_layout(tmp_path / "data")
    build(layout, verify_images=True, cache_dir=str(tmp_path / "cache")).setup("fit")
    assert (tmp_path / "cache" / "verified.sqlite").is_file() and checks
    checks.clear()
    build(layout, verify_images=True, cache_dir=str(tmp_path / "cache")).setup("fit")
    assert checks == []
    build(layout, verify_images=True, cache=False, cache_dir=str(tmp_path / "off")).setup("fit")
    assert checks and not (tmp_path / "off").exists()


class FakeStrategy:
    """Rank zero's outcome, as ``broadcast`` hands it to every rank."""

    def __init__(self) -> None:
        self.sent = None

    def broadcast(self, obj, src=0):
        if self.sent is None:
            self.sent = obj
        return self.sent


def test_once_per_job_runs_on_rank_zero_and_hands_the_result_to_the_others() -> None:
    strategy, calls = FakeStrategy(), []

    def work():
        calls.append(1)
        return {"verified": 3}

    zero = SimpleNamespace(strategy=strategy, world_size=2, global_rank=0)
    one = SimpleNamespace(strategy=strategy, world_size=2, global_rank=1)
    assert once_per_job(zero, work) == {"verified": 3}
    assert once_per_job(one, work) == {"verified": 3}
    assert calls == [1]  # rank one waited for the result instead of repeating the work
    assert once_per_job(None, work) == {"verified": 3} and calls == [1, 1]  # no trainer: just the work


def test_once_per_job_raises_rank_zeros_error_on_every_rank() -> None:
    strategy = FakeStrategy()

    def work():
        raise DataError("Unreadable image files in samples.csv")

    for rank in (0, 1):
        with pytest.raises(DataError, match="Unreadable image files"):
            once_per_job(SimpleNamespace(strategy=strategy, world_size=2, global_rank=rank), work)
