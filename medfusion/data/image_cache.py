"""The decoded-image cache: each image decoded, resized and centre-cropped to the model input size once, stored as
uint8 in a memory-mapped array, and read by every later epoch and run instead of the file.

Decoding and resizing a 600x450 JPEG costs a large share of a training step on a CPU (and caps a GPU's
throughput); reading 150 KB of pixels from a page-cached array costs almost nothing. ``data.image_cache: DIR``
stores one entry per image modality and set under ``DIR/<name>-<size>px-<hash>/pixels.npy`` (``[N, 3, S, S]``
uint8, what :func:`~medfusion.data.transforms.eval_transform` has before scaling and normalising, so evaluation
inputs are exactly the uncached ones). The hash covers every file's resolved path, size and modification time,
the size and the decode rule: a changed file, image size or rule makes a new entry, and a stale one is never read
(old entries stay until you delete them). Training augmentations then run on the cached square per step: random
resized crops within it (not within the original, wider image), flips and colour jitter.

A file that fails to decode while the cache is built is marked, not stored: reading it goes to the file again, so
``data.on_bad_image`` applies as without the cache.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medfusion.data.crops import CropError, Crops
from medfusion.data.images import DECODE_ERRORS, load_rgb
from medfusion.data.transforms import decode_transform
from medfusion.data.verify import file_key, worker_count
from medfusion.runs.progress import track

# Bump when the decode rule (load_rgb, then decode_transform) changes, so that older pixels are never read.
DECODE_VERSION = 1
_CHUNK = 64  # images per task of a worker process


@dataclass
class CachedImages:
    """One entry: ``pixels`` ``[N, 3, S, S]`` uint8 (memory-mapped), ``stored`` bool ``[N]`` (False: no image, or
    it failed to decode when the entry was built)."""

    pixels: np.ndarray
    stored: np.ndarray

    def __len__(self) -> int:
        return len(self.stored)

    def image(self, index: int) -> torch.Tensor | None:
        """Image ``index`` as a uint8 ``[3, S, S]`` tensor (a copy), None when it is not stored."""
        return torch.from_numpy(np.array(self.pixels[index])) if self.stored[index] else None

    @classmethod
    def open(cls, folder: Path) -> CachedImages:
        return cls(np.load(folder / "pixels.npy", mmap_mode="r"), np.load(folder / "stored.npy"))


def entry_name(modality: str, paths: Sequence[str | None], size: int, crops: Crops | None = None) -> str:
    """``<modality>-<size>px-<hash>`` of the files (resolved path, size, modification time), the size, the rule and
    the crops (boxes or mask files) when the modality is cut from its files."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps({"decode": DECODE_VERSION, "size": size, "channels": 3}).encode())
    if crops is not None:
        digest.update(crops.digest().encode())
    for path in paths:
        digest.update(f"{file_key(path) if path is not None else None}\n".encode())
    return f"{modality}-{size}px-{digest.hexdigest()}"


def cached_images(
    directory: str | Path,
    modality: str,
    paths: Sequence[str | None],
    size: int,
    what: str = "images",
    crops: Crops | None = None,
) -> CachedImages:
    """The entry for ``paths`` at ``size``, built first when there is none (see :func:`image_entry`)."""
    return CachedImages.open(image_entry(directory, modality, paths, size, what, crops))


def image_entry(
    directory: str | Path,
    modality: str,
    paths: Sequence[str | None],
    size: int,
    what: str = "images",
    crops: Crops | None = None,
) -> Path:
    """The folder of the entry for ``paths`` at ``size`` (each image cut to its crop first, with ``crops``), built
    first when there is none (with progress, over worker processes when there are many images); a failed build
    leaves nothing behind."""
    folder = Path(directory).expanduser() / entry_name(modality, paths, size, crops)
    if (folder / "stored.npy").is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        shape = (len(paths), 3, size, size)
        # Create the file; _store writes its rows, in this process or in the workers.
        np.lib.format.open_memmap(staging / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
        stored = np.zeros(len(paths), dtype=bool)
        todo = [i for i, path in enumerate(paths) if path is not None]
        chunks = [todo[start : start + _CHUNK] for start in range(0, len(todo), _CHUNK)]
        tasks = [(str(staging / "pixels.npy"), [(i, str(paths[i])) for i in chunk], size, crops) for chunk in chunks]
        description = f"caching decoded {what} at {size} px"
        for _, done in track(_run(tasks), description=description, total=len(todo), unit="images", size=_tried):
            stored[done] = True
        np.save(staging / "stored.npy", stored)
        try:
            os.replace(staging, folder)  # atomic; another process may have won the race
        except OSError:
            if not (folder / "stored.npy").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


Task = tuple[str, list[tuple[int, str]], int, Crops | None]  # the array, (index, image path) items, size, crops


def _tried(result: tuple[int, list[int]]) -> int:
    return result[0]


def _run(tasks: list[Task]) -> Iterator[tuple[int, list[int]]]:
    """What :func:`_store` returns for each task, over worker processes when there are many images."""
    workers = worker_count(sum(len(task[1]) for task in tasks))
    if not workers:
        yield from map(_store, tasks)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_store, tasks)


def _store(task: Task) -> tuple[int, list[int]]:
    """Decode a task's ``(index, path)`` items into rows of its array: how many were tried, the indices stored."""
    array_path, items, size, crops = task
    pixels = np.load(array_path, mmap_mode="r+")
    transform = decode_transform(size)
    done = []
    for index, path in items:
        try:
            image = load_rgb(path)
            if crops is not None:
                image = image.crop(crops.box(index, *image.size)[0])
            pixels[index] = transform(image).numpy()
        except (*DECODE_ERRORS, CropError):
            continue  # read from the file again, where data.on_bad_image (or the crop's error) decides
        done.append(index)
    pixels.flush()
    return len(items), done
