"""2.5D slice stacks: an image modality read as a row's slice and its neighbours, ``[K, 3, S, S]`` per sample.

``data.slices: {image: {neighbours: 2}}`` reads, beside the file a row names (``P0001_T2_s09.png``), the files
whose last number is 1 and 2 lower and higher in the same folder, keeping its zero padding (``s07`` ... ``s11``):
K = 5 slices, in order. At a volume's edge, where such a neighbour does not exist, the nearest slice that does
(towards the centre) is repeated in its place: replicated, never zero-filled, counted in the data report
(``replicated_slices/<set>``) and warned about. ``data.slices: {image: {column: slice_files}}`` reads instead the
files a column lists, in order, separated by ``sep`` (default ``;``); every row lists the same number, and every
listed file must exist. The model reads a stack as channels or as a sequence (``model.slice_mode``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medfusion.data.errors import ConfigError, raise_for_rows
from medfusion.data.images import ImageIndex

_LAST_NUMBER = re.compile(r"(\d+)(?=\D*$)")


@dataclass(frozen=True)
class SliceSpec:
    """How one image modality's stack is found: ``neighbours`` on each side of the row's file, or the files the
    ``column`` lists (separated by ``sep``)."""

    neighbours: int | None = None
    column: str | None = None
    sep: str = ";"


def slice_specs(options: dict[str, dict[str, Any]] | None, image_names: Sequence[str]) -> dict[str, SliceSpec]:
    """``data.slices`` checked, with a :class:`ConfigError` naming what is wrong."""
    specs: dict[str, SliceSpec] = {}
    for name, values in (options or {}).items():
        where = f"data.slices.{name}"
        if name not in image_names:
            raise ConfigError(f"{where}: {name!r} is not an image modality ({list(image_names)}). Fix: name one.")
        if not isinstance(values, dict) or set(values) - set(SliceSpec.__dataclass_fields__):
            raise ConfigError(f"{where} must be {{neighbours: K}} or {{column: <column>, sep: ';'}}, got {values!r}")
        spec = SliceSpec(**values)
        if (spec.neighbours is None) == (spec.column is None):
            raise ConfigError(f"{where} needs neighbours: K or column: <a column of slice files> (one of them).")
        if spec.neighbours is not None and not (isinstance(spec.neighbours, int) and spec.neighbours >= 1):
            raise ConfigError(f"{where}.neighbours must be a whole number >= 1, got {spec.neighbours!r}")
        specs[name] = spec
    return specs


def neighbour_stacks(index: ImageIndex, centres: Sequence[str | None], k: int, csv_path: Any) -> list[list[str] | None]:
    """Per row the ``2k + 1`` files around its centre file (None stays None), edges replicated (see
    :func:`replicated`). A :class:`DataError` names the rows whose file name holds no number."""
    stacks = [None if centre is None else _stack(index, centre, k) for centre in centres]
    unnumbered = [r for r, (centre, stack) in enumerate(zip(centres, stacks, strict=True)) if centre and not stack]
    raise_for_rows(
        "Slice files whose name holds no slice number",
        csv_path,
        unnumbered,
        [f"{centres[r]}" for r in unnumbered],
        "name slices with their number (P0001_s09.png), or list each row's slices in a column (data.slices "
        "column: ...).",
    )
    return stacks


def _stack(index: ImageIndex, centre: str, k: int) -> list[str]:
    """The files ``-k .. k`` around ``centre`` by the last number of its name, a missing one replaced by the
    nearest one towards the centre; empty when the name holds no number."""
    folder, _, name = index.relative(centre).rpartition("/")
    stem, dot, ext = name.rpartition(".")
    match = _LAST_NUMBER.search(stem)
    if match is None:
        return []
    number, width = int(match.group(1)), len(match.group(1))
    found: dict[int, str | None] = {0: centre}
    for offset in (o for o in range(-k, k + 1) if o and number + o >= 0):
        neighbour = f"{stem[: match.start()]}{number + offset:0{width}d}{stem[match.end() :]}{dot}{ext}"
        files = index.candidates(f"{folder}/{neighbour}" if folder else neighbour)
        found[offset] = files[0] if len(files) == 1 and index.inside(files[0]) else None
    stack = []
    for offset in range(-k, k + 1):
        nearest = offset
        while found.get(nearest) is None:  # towards the centre
            nearest -= 1 if nearest > 0 else -1
        stack.append(found[nearest])  # type: ignore[arg-type]
    return stack


def replicated(stacks: Sequence[Sequence[str] | None]) -> int:
    """How many slices of ``stacks`` repeat their neighbour towards the centre (replicated at a volume's edge)."""
    count = 0
    for stack in stacks:
        if stack is not None:
            centre = len(stack) // 2
            count += sum(stack[j] == stack[j + (1 if j < centre else -1)] for j in range(len(stack)) if j != centre)
    return count


def listed_stacks(index: ImageIndex, table: pd.DataFrame, spec: SliceSpec, csv_path: Any) -> list[list[str] | None]:
    """Per row the files its ``spec.column`` cell lists, every one found under the image folder (a
    :class:`DataError` names missing files, or rows listing another number of slices than the first)."""
    assert spec.column is not None
    cells = table[spec.column].tolist()
    lists = [None if pd.isna(c) else [p.strip() for p in str(c).split(spec.sep) if p.strip()] for c in cells]
    counts = [len(keys) for keys in lists if keys is not None]
    size = counts[0] if counts else 0
    uneven = [r for r, keys in enumerate(lists) if keys is not None and len(keys) != size]
    raise_for_rows(
        f"Rows listing another number of slices than the first ({size})",
        csv_path,
        uneven,
        [f"{spec.column} lists {len(lists[r])}" for r in uneven],  # type: ignore[arg-type]
        "list the same number of slices (in order) on every row.",
    )
    by_position = [
        index.resolve_all([keys[j] if keys is not None else None for keys in lists], csv_path) for j in range(size)
    ]
    return [None if keys is None else [by_position[j][r] for j in range(size)] for r, keys in enumerate(lists)]
