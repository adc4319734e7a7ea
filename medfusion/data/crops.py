"""Global-local input: an image modality cut from another one around the lesion, at the file's full resolution.

``data.crops: {local: {source: image, box_columns: [x0, y0, x1, y1]}}`` makes ``local`` a modality of its own:
each sample's ``image`` file, cropped to the row's box (``units: pixels`` or ``fractions`` of the width and
height; ``x1``, ``y1`` exclusive) or, with ``mask_column``, to the bounding box of the mask file's non-zero
pixels, grown by ``margin`` (a fraction of the box's width and height on each side), then resized like any image.
A box that reaches outside the image is clipped to it, with a warning naming the file and row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image

from medfusion.data.errors import ConfigError, raise_for_rows
from medfusion.data.images import DECODE_ERRORS
from medfusion.data.verify import file_key

Units = Literal["pixels", "fractions"]
Box = tuple[float, float, float, float]
_REPORTED_CLIPS = 5  # clipped boxes warned about per dataset and process; the rest are counted in one line


@dataclass(frozen=True)
class CropSpec:
    """How one crop modality is cut: from the image modality ``source``, by ``box_columns`` (in ``units``) or by
    the mask files of ``mask_column`` (paths like the images'), grown by ``margin`` on each side."""

    source: str = "image"
    box_columns: tuple[str, str, str, str] | None = None
    units: Units = "pixels"
    mask_column: str | None = None
    margin: float = 0.0

    @property
    def columns(self) -> list[str]:
        """The CSV columns the crop reads."""
        return list(self.box_columns or ()) + ([self.mask_column] if self.mask_column else [])


def crop_specs(options: dict[str, dict[str, Any]] | None, image_names: Sequence[str]) -> dict[str, CropSpec]:
    """``data.crops`` checked: per crop modality name its :class:`CropSpec`, with a :class:`ConfigError` naming
    what is wrong (unknown keys, no or both sources, a source that is no image modality, a negative margin)."""
    specs: dict[str, CropSpec] = {}
    for name, values in (options or {}).items():
        where = f"data.crops.{name}"
        if not isinstance(values, dict):
            raise ConfigError(f"{where} must be a mapping {{source, box_columns | mask_column, ...}}, got {values!r}")
        unknown = sorted(set(values) - set(CropSpec.__dataclass_fields__))
        if unknown:
            known = ", ".join(CropSpec.__dataclass_fields__)
            raise ConfigError(f"{where} has unknown key(s) {unknown}. Fix: use {known}.")
        spec = CropSpec(**{**values, "box_columns": _four(values.get("box_columns"), where)})
        if (spec.box_columns is None) == (spec.mask_column is None):
            raise ConfigError(f"{where} needs box_columns: [x0, y0, x1, y1] or mask_column (one of them).")
        if spec.source not in image_names or spec.source in (options or {}):
            raise ConfigError(
                f"{where}.source is {spec.source!r}, which is not an image modality read from files "
                f"({list(image_names)}). Fix: name one of them."
            )
        if spec.units not in ("pixels", "fractions"):
            raise ConfigError(f"{where}.units must be 'pixels' or 'fractions', got {spec.units!r}")
        if not (spec.margin >= 0 and math.isfinite(spec.margin)):
            raise ConfigError(f"{where}.margin must be 0 or more (a fraction of the box size), got {spec.margin}")
        specs[name] = spec
    return specs


def _four(columns: Any, where: str) -> tuple[str, str, str, str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or len(columns) != 4:
        raise ConfigError(f"{where}.box_columns must name 4 columns [x0, y0, x1, y1], got {columns!r}")
    return tuple(str(c) for c in columns)  # type: ignore[return-value]


def read_boxes(table: pd.DataFrame, spec: CropSpec, csv_path: Path) -> list[list[float]]:
    """Each row's box from ``spec.box_columns``; a :class:`DataError` names the rows whose box is empty, not a
    number, or has ``x1 <= x0`` or ``y1 <= y0``."""
    assert spec.box_columns is not None
    values = table[list(spec.box_columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = [r for r in range(len(values)) if not np.isfinite(values[r]).all()]
    names = ", ".join(spec.box_columns)
    raise_for_rows(
        "Crop boxes that are empty or not numbers",
        csv_path,
        bad,
        [f"{names} = {table[list(spec.box_columns)].iloc[r].tolist()}" for r in bad],
        f"give every row four numbers in {names}.",
    )
    empty = [r for r in range(len(values)) if values[r, 2] <= values[r, 0] or values[r, 3] <= values[r, 1]]
    raise_for_rows(
        "Crop boxes with x1 <= x0 or y1 <= y0",
        csv_path,
        empty,
        [f"{names} = {values[r].tolist()}" for r in empty],
        "a box runs from its top-left corner (x0, y0) to its bottom-right one (x1, y1), x1 > x0 and y1 > y0.",
    )
    return values.tolist()


def pixel_box(box: Sequence[float], units: Units, margin: float, width: int, height: int) -> tuple[Box, bool]:
    """``box`` in pixels of a ``width`` x ``height`` image, grown by ``margin``, rounded and clipped to the image;
    and whether clipping changed it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if units == "fractions":
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    grow_x, grow_y = margin * (x1 - x0), margin * (y1 - y0)
    wanted = (round(x0 - grow_x), round(y0 - grow_y), round(x1 + grow_x), round(y1 + grow_y))
    clipped = (max(wanted[0], 0), max(wanted[1], 0), min(wanted[2], width), min(wanted[3], height))
    return clipped, clipped != wanted


def mask_box(mask: Image.Image) -> Box | None:
    """The bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of a mask's non-zero pixels; None when it has none."""
    found = np.asarray(mask.convert("L")) > 0
    rows, cols = found.any(axis=1).nonzero()[0], found.any(axis=0).nonzero()[0]
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class CropError(ValueError):
    """A crop that cannot be cut (a mask of another size, an empty mask, a box outside the image), with its fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass
class Crops:
    """The crops of one modality over a dataset's samples: ``values`` holds per sample its box (4 numbers) or its
    mask file."""

    spec: CropSpec
    values: list[Any]

    def subset(self, rows: Sequence[int]) -> Crops:
        return Crops(self.spec, [self.values[r] for r in rows])

    def box(self, index: int, width: int, height: int) -> tuple[Box, bool]:
        """Sample ``index``'s crop in pixels of its ``width`` x ``height`` image and whether it was clipped; a
        :class:`CropError` when it cannot be cut."""
        value, spec = self.values[index], self.spec
        units: Units = spec.units
        if spec.mask_column is not None:
            try:
                with Image.open(value) as mask:
                    size, found = mask.size, mask_box(mask)
            except DECODE_ERRORS as err:
                raise CropError(f"unreadable mask {value}: {err}", "replace the mask file.") from err
            if size != (width, height):
                raise CropError(
                    f"mask {value} is {size[0]}x{size[1]} but its image is {width}x{height}",
                    "give each image a mask of its own size.",
                )
            if found is None:
                raise CropError(f"mask {value} has no non-zero pixel", "mark the lesion in the mask, or drop the row.")
            value, units = found, "pixels"
        box, clipped = pixel_box(value, units, spec.margin, width, height)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise CropError(
                f"the box {list(value)} ({units}) lies outside the {width}x{height} image",
                f"give boxes inside the image (data.crops units: {units}).",
            )
        return box, clipped

    def digest(self) -> str:
        """A hash of how every sample is cut (for cache keys): the spec and each box or mask file's key."""
        values = [file_key(v) if self.spec.mask_column else v for v in self.values]
        blob = json.dumps({"spec": repr(self.spec), "values": values}, default=str).encode()
        return hashlib.blake2b(blob, digest_size=12).hexdigest()


class CropReader:
    """Cuts a dataset's crops, warning (on rank zero) about the first clipped boxes, naming the file and row."""

    def __init__(self, crops: dict[str, Crops], where: Any) -> None:
        self.crops, self.where = crops, where
        self._clipped = 0

    def cut(self, name: str, image: Image.Image, index: int, path: Any) -> Image.Image:
        box, clipped = self.crops[name].box(index, *image.size)
        if clipped:
            self._clipped += 1
            if self._clipped <= _REPORTED_CLIPS:
                more = " (further clipped crops are not reported)" if self._clipped == _REPORTED_CLIPS else ""
                rank_zero_warn(f"The {name!r} crop of {path} ({self.where(index)}) reaches outside the image: "
                               f"clipped to {list(box)}{more}.")  # fmt: skip
        return image.crop(box)
