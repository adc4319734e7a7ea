"""The up-front image check: every file decodes (or the run stops naming each bad one), with the files already
verified by an earlier run skipped and the rest checked over worker processes.

A file counts as verified while its resolved path, size and modification time are those recorded when it passed
(the key the feature cache uses too): a second run over unchanged files decodes nothing, a touched or replaced
file is checked again. The record is an SQLite file in the cache directory (see :mod:`medfusion.data.cache_dir`),
safe to share between the processes of one job and between jobs; only files that passed are recorded.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from medfusion.data.errors import raise_for_rows
from medfusion.data.images import DECODE_ERRORS, TOO_LARGE_FIX, check_jpeg, too_large_detail
from medfusion.runs.progress import track

# Bump when the check itself (or the record's layout) changes, so that files passed by an older check are checked
# again.
CHECK_VERSION = 2
_PARALLEL_FROM = 256  # fewer unverified files than this are checked in the main process
_QUERY_CHUNK = 500  # paths per SQLite query (below its limit of bound parameters)

FileKey = tuple[str, str]  # absolute path, stamp


def check_image(path: str | Path) -> tuple[str, str] | None:
    """None when ``path`` decodes; else ``("large", reason)`` for an image over PIL's pixel limit or ``("bad",
    reason)``. PNGs and the like are checked by ``verify`` (structure and checksums), JPEGs by
    :func:`~medfusion.data.images.check_jpeg`."""
    try:
        with Image.open(path) as image:
            kind = image.format
            image.verify()
        if kind == "JPEG":
            check_jpeg(path)
    except Image.DecompressionBombError as err:
        return "large", too_large_detail(path, err)
    except DECODE_ERRORS as err:
        return "bad", f"{path}: {err}"
    return None


class VerifiedFiles:
    """The files known to decode, by path and stamp (size, modification time, inode: a file replaced or a symlink
    re-pointed gets a new one), in ``directory``/verified.sqlite.

    An unusable directory (read-only, full) is warned about once and the files are then checked every run."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory).expanduser() / "verified.sqlite"
        self._table = f"passed_v{CHECK_VERSION}"
        self._unusable = False  # warned about once: not written to either

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (path TEXT PRIMARY KEY, stamp TEXT)")
        return db

    def unverified(self, paths: Sequence[str], what: str = "images") -> list[tuple[int, str]]:
        """``(position, stamp)`` of each of ``paths`` not recorded with its current stamp (chunk by chunk, so
        that a million paths need no million-entry set)."""
        todo: list[tuple[int, str]] = []
        try:
            with self._connect() as db:
                chunks = (
                    range(start, min(start + _QUERY_CHUNK, len(paths))) for start in range(0, len(paths), _QUERY_CHUNK)
                )
                description = f"looking up earlier checks of {what}"
                for chunk in track(chunks, description=description, total=len(paths), unit="images", size=len):
                    stamps = {i: stamp(paths[i]) for i in chunk}
                    marks = ",".join("?" * len(chunk))
                    query = f"SELECT path, stamp FROM {self._table} WHERE path IN ({marks})"
                    recorded = dict(db.execute(query, [paths[i] for i in chunk]))
                    todo += [(i, s) for i, s in stamps.items() if recorded.get(paths[i]) != s]
        except (sqlite3.Error, OSError) as err:
            rank_zero_warn(f"Image verification record {self.path} unusable ({err}); checking every image")
            self._unusable = True
            return [(i, "") for i in range(len(paths))]
        return todo

    def add(self, entries: Iterable[tuple[str, str]]) -> None:
        """Record ``(path, stamp)`` entries as passed."""
        if self._unusable:
            return
        try:
            with self._connect() as db:
                db.executemany(f"INSERT OR REPLACE INTO {self._table} VALUES (?, ?)", entries)
        except (sqlite3.Error, OSError) as err:
            rank_zero_warn(f"Could not record verified images in {self.path} ({err}); they are checked next run")


def stamp(path: str | Path) -> str:
    """What changes when a file's content may have: its size, modification time and inode."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def file_key(path: str | Path) -> FileKey:
    """What identifies a file's content for the caches: its absolute path and :func:`stamp` (no ``realpath``: a
    million of those cost seconds; a re-pointed symlink changes the inode)."""
    return os.path.abspath(path), stamp(path)


def worker_count(count: int) -> int:
    """Worker processes for checking or decoding ``count`` files: the usable CPUs (at most 8), none for a few."""
    if count < _PARALLEL_FROM:
        return 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, usable) if usable > 1 else 0


def _check_all(paths: Sequence[str], what: str) -> list[tuple[str, str] | None]:
    """:func:`check_image` of every path, over worker processes when there are many, with progress."""
    workers = worker_count(len(paths))
    if not workers:
        return list(track(map(check_image, paths), description=what, total=len(paths), unit="images"))
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = pool.map(check_image, paths, chunksize=max(1, min(64, len(paths) // (workers * 8))))
        return list(track(results, description=what, total=len(paths), unit="images"))


def verify_images(paths: Sequence[str | Path | None], csv_path: str | Path, cache: VerifiedFiles | None = None) -> None:
    """Raise one :class:`~medfusion.data.errors.DataError` naming every file (by its CSV row) that cannot be
    decoded or is too large to decode safely (None: no image, skipped). With ``cache``, files it records as passed
    are skipped and those that pass are recorded."""
    rows = [row for row, path in enumerate(paths) if path is not None]
    files = [str(paths[row]) for row in rows]
    name = Path(csv_path).name
    if cache is not None:
        todo = cache.unverified(files, f"the images of {name}")
        rows, files, stamps = [rows[i] for i, _ in todo], [files[i] for i, _ in todo], [s for _, s in todo]
    results = _check_all(files, f"verifying images of {name}")
    if cache is not None:
        cache.add((f, s) for f, s, result in zip(files, stamps, results, strict=True) if result is None and s)
    failed = [(row, result) for row, result in zip(rows, results, strict=True) if result is not None]
    large = [(row, reason) for row, (kind, reason) in failed if kind == "large"]
    bad = [(row, reason) for row, (kind, reason) in failed if kind == "bad"]
    raise_for_rows(
        "Images too large to decode safely", csv_path, [r for r, _ in large], [s for _, s in large], TOO_LARGE_FIX
    )
    raise_for_rows(
        "Unreadable image files",
        csv_path,
        [r for r, _ in bad],
        [s for _, s in bad],
        "replace or remove these files (or the rows that name them).",
    )
