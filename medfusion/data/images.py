"""Finding image files for CSV ids under ``image_dir`` and loading them as RGB."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medfusion.data.errors import DataError, raise_for_rows

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# What PIL raises for a file it cannot decode (UnidentifiedImageError and truncated data are OSErrors).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class ImageIndex:
    """Every image file under ``root`` (recursively), found by relative path with or without
    extension, or by bare file name or stem when it is unique (HAM10000 ships ``part_1/`` and ``part_2/``).
    An absolute path is accepted when it lies inside ``root``."""

    def __init__(self, root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"image_dir {self.root} does not exist or is not a directory. Fix: set data.image_dir.")
        suffixes = {e.lower() for e in extensions}
        self._by_key: dict[str, Path] = {}
        stems: dict[str, list[Path]] = {}
        names: dict[str, list[Path]] = {}
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                path = Path(dirpath, name)
                if path.suffix.lower() not in suffixes:
                    continue
                rel = path.relative_to(self.root).as_posix()
                self._by_key[rel] = path
                self._by_key.setdefault(rel[: -len(path.suffix)], path)
                stems.setdefault(path.stem, []).append(path)
                names.setdefault(name, []).append(path)
        self._by_stem = {stem: paths[0] for stem, paths in stems.items() if len(paths) == 1}
        self._by_name = {name: paths[0] for name, paths in names.items() if len(paths) == 1}

    def escapes(self, key: str) -> bool:
        """True when ``key`` points outside the root (``../x``, an absolute path, a symlink out)."""
        return not (self.root / key).resolve().is_relative_to(self.root)

    def find(self, key: str) -> Path | None:
        key = key.strip().replace("\\", "/")
        if os.path.isabs(key):
            try:
                key = Path(key).resolve().relative_to(self.root).as_posix()
            except ValueError:
                return None
        key = posixpath.normpath(key)  # "./a.png", "sub/../a.png"
        return self._by_key.get(key) or self._by_stem.get(key) or self._by_name.get(key)

    def resolve_all(self, keys: Sequence[str | None], csv_path: str | Path) -> list[Path | None]:
        """Paths for every key (None for a None key: no image), or one :class:`DataError` listing every
        missing or escaping row."""
        paths: list[Path | None] = []
        escaping: list[int] = []
        missing: list[int] = []
        for row, key in enumerate(keys):
            if key is None:
                paths.append(None)
            elif self.escapes(key):
                escaping.append(row)
            elif (path := self.find(key)) is None:
                missing.append(row)
            else:
                paths.append(path)
        raise_for_rows(
            "Image paths that escape image_dir",
            csv_path,
            escaping,
            [f"{keys[r]!r} resolves outside {self.root}" for r in escaping],
            "image ids/paths must be relative to data.image_dir and stay inside it.",
        )
        raise_for_rows(
            "Missing image files",
            csv_path,
            missing,
            [f"no file for {keys[r]!r} under {self.root}" for r in missing],
            f"check data.image_dir (ids may omit the extension; searched {', '.join(IMAGE_EXTENSIONS)}).",
        )
        return paths


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image and convert grayscale, palette, CMYK, RGBA, 16-bit or float grayscale to RGB.

    PIL's own ``convert`` clips 16-bit and 32-bit grayscale (X-ray, MRI exports) at 255, which turns
    most of such an image white; those are rescaled to 0..255 instead (see :func:`to_8bit`).
    """
    with Image.open(path) as image:
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            return to_8bit(image, significant_bits(image)).convert("RGB")
        return image.convert("RGB")


def to_8bit(image: Image.Image, bits: int | None = None) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grayscale image as 8-bit ``L``.

    Integer images are scaled by the range of their bit depth, so that one intensity gives one grey in
    every image: ``2**bits - 1`` when the file declares ``bits`` (a 12-bit TIFF: 4095 -> 255), else
    65535 -> 255. An ``I`` image with values outside 0..65535 (signed or 32-bit data) and a float image
    outside 0..1 have no such range and are min-max scaled over their own values; a float image
    within 0..1 is multiplied by 255.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        full = (0.0, 1.0)
    else:
        full = (0.0, float(2 ** (bits or 16) - 1))
        if high > full[1]:  # more bits than declared
            full = (0.0, 65535.0)
    if full[0] <= low and high <= full[1]:
        low, high = full
    scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def significant_bits(image: Image.Image) -> int | None:
    """How many bits of a 16-bit grayscale image carry data, where the file says so: a TIFF's
    ``BitsPerSample`` (12 for 12-bit X-ray TIFFs, whose values PIL leaves at 0..4095). A PNG's
    ``sBIT`` is not one of these: its samples are already scaled to the full 16 bits."""
    if image.format != "TIFF":
        return None
    bits = image.tag_v2.get(258)  # type: ignore[attr-defined]
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    return bits if isinstance(bits, int) and 1 <= bits <= 16 else None


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """Whether a JPEG ends with its end-of-image marker: a cheap check for truncated files."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64))
        return f.read().rstrip(b"\x00").endswith(b"\xff\xd9")


def verify_images(paths: Sequence[Path | None], csv_path: str | Path) -> None:
    """Raise one :class:`DataError` naming every file that cannot be decoded (None: no image, skipped)."""
    bad: list[int] = []
    reasons: list[str] = []
    for row, path in enumerate(paths):
        if path is None:
            continue
        try:
            with Image.open(path) as image:
                kind = image.format
                image.verify()  # structure and checksums: all of a PNG, but only the header of a JPEG
            if kind == "JPEG" and not _ends_with_jpeg_eoi(path):
                with Image.open(path) as image:
                    image.load()  # truncated (fails here, not mid-epoch) or just trailing bytes (fine)?
        except DECODE_ERRORS as err:
            bad.append(row)
            reasons.append(f"{path}: {err}")
    raise_for_rows(
        "Unreadable image files", csv_path, bad, reasons, "replace or remove these files (or the rows that name them)."
    )
