"""Finding image files for CSV ids under ``image_dir``, checking that a JPEG decodes to its end, and loading images
as RGB (the up-front check of every file is in :mod:`medfusion.data.verify`)."""

from __future__ import annotations

import io
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from medfusion.data.errors import DataError, raise_for_rows
from medfusion.runs.progress import track

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# What PIL raises for a file it cannot decode (UnidentifiedImageError and truncated data are OSErrors).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
TOO_LARGE_FIX = "downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS in your own code if you trust the file."


class ImageIndex:
    """Every image file under ``root`` (recursively), found by relative path with or without
    extension, or by bare file name or stem (HAM10000 ships ``part_1/`` and ``part_2/``).
    An absolute path is accepted when it lies inside ``root``; a file is accepted only when what it
    resolves to (through symlinks) lies inside ``root`` too.

    Built for a million files: paths are strings (``Path`` objects cost ~0.5 KB each), folders are
    read with ``os.scandir`` (no ``stat`` per file), only files that are symlinks are resolved, and
    the tables by path without extension, by stem and by name are built on first need."""

    def __init__(self, root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"image_dir {self.root} does not exist or is not a directory. Fix: set data.image_dir.")
        self._prefix = os.path.join(str(self.root), "")
        suffixes = {e.lower() for e in extensions}
        self._links: set[str] = set()  # files that are symlinks (absolute paths)
        found = track(self._walk(suffixes), description=f"indexing {self.root}", unit="image files")
        self._by_path: dict[str, str] = dict(found)  # relative path -> absolute path
        # Each of these may name several files (a.png and a.jpg; part_1/a.jpg and part_2/a.jpg): ambiguous.
        self._tables: dict[str, dict[str, list[str]]] = {}

    def _walk(self, suffixes: set[str]) -> Iterator[tuple[str, str]]:
        """``(relative path, absolute path)`` of every image file; a symlink to a folder is not entered."""
        folders = [""]
        while folders:
            folder = folders.pop()
            with os.scandir(self._prefix + folder) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_dir():
                        if not entry.is_symlink():
                            folders.append(f"{folder}{entry.name}/")
                    elif os.path.splitext(entry.name)[1].lower() in suffixes:
                        if entry.is_symlink():
                            self._links.add(entry.path)
                        yield folder + entry.name, entry.path

    def _table(self, kind: str) -> dict[str, list[str]]:
        """Files by ``"key"`` (relative path without extension), ``"stem"`` or ``"name"``."""
        if kind not in self._tables:
            table: dict[str, list[str]] = {}
            for rel, path in self._by_path.items():  # every file here has an extension
                name = rel.rpartition("/")[2]
                key = rel.rpartition(".")[0] if kind == "key" else name.rpartition(".")[0] if kind == "stem" else name
                table.setdefault(key, []).append(path)
            self._tables[kind] = table
        return self._tables[kind]

    def escapes(self, key: str) -> bool:
        """True when ``key`` itself points outside the root (``../x``, an absolute path, a symlink out)."""
        return not (self.root / key).resolve().is_relative_to(self.root)

    def candidates(self, key: str) -> list[str]:
        """The files ``key`` names, in order of preference: its relative path with extension, without
        extension, then its stem or file name anywhere below the root. More than one: ambiguous."""
        key = key.strip()
        if key in self._by_path:  # the common cases first, with no normalisation to pay for
            return [self._by_path[key]]
        if key in (table := self._table("key")):
            return table[key]
        key = key.replace("\\", "/")
        if os.path.isabs(key):
            try:
                key = Path(key).resolve().relative_to(self.root).as_posix()
            except ValueError:
                return []
        key = posixpath.normpath(key)  # "./a.png", "sub/../a.png"
        if key in self._by_path:
            return [self._by_path[key]]
        for kind in ("key", "stem", "name"):
            if key in (table := self._table(kind)):
                return table[key]
        return []

    def inside(self, path: str) -> bool:
        """Whether an indexed file ``path`` stays inside the root (it is no symlink out)."""
        return self._escaping_target(path) is None

    def relative(self, path: str) -> str:
        """An indexed file's path relative to the root."""
        return path.removeprefix(self._prefix)

    def _escaping_target(self, path: str) -> str | None:
        """What ``path`` resolves to when that lies outside the root (a symlink out), else None."""
        if path not in self._links:
            return None
        target = os.path.realpath(path)
        return None if target.startswith(self._prefix) else target

    def resolve_all(self, keys: Sequence[str | None], csv_path: str | Path) -> list[str | None]:
        """Paths for every key (None for a None key: no image), or one :class:`DataError` listing every
        escaping, ambiguous or missing row."""
        paths: list[str | None] = []
        escaping: list[int] = []
        escapes_to: list[str] = []
        ambiguous: list[int] = []
        missing: list[int] = []
        for row, key in enumerate(keys):
            if key is None:
                paths.append(None)
                continue
            found = self.candidates(key)
            if len(found) > 1:
                ambiguous.append(row)
            elif not found:
                if self.escapes(key):
                    escaping.append(row)
                    escapes_to.append(f"{key!r} resolves to {(self.root / key).resolve()}")
                else:
                    missing.append(row)
            elif (target := self._escaping_target(found[0])) is not None:
                escaping.append(row)
                escapes_to.append(f"{key!r} is {found[0]}, a symlink to {target}")
            else:
                paths.append(found[0])
        raise_for_rows(
            "Image paths that escape image_dir",
            csv_path,
            escaping,
            [f"{detail}, outside {self.root}" for detail in escapes_to],
            "image ids/paths must be relative to data.image_dir and stay inside it: move or copy linked files "
            "into data.image_dir (a symlink must point inside it), or set data.image_dir to a folder holding them.",
        )
        if ambiguous:
            matches = {r: sorted(p.removeprefix(self._prefix) for p in self.candidates(keys[r])) for r in ambiguous}
            example = matches[ambiguous[0]][0]
            raise_for_rows(
                "Ambiguous image ids",
                csv_path,
                ambiguous,
                [f"{keys[r]!r} matches {len(m)} files under {self.root}: {', '.join(m)}" for r, m in matches.items()],
                f"name each such file by its path under data.image_dir with its extension (e.g. {example!r}) "
                "in the id or in data.image_column, or remove all but one of the files.",
            )
        raise_for_rows(
            "Missing image files",
            csv_path,
            missing,
            [f"no file for {keys[r]!r} under {self.root}" for r in missing],
            f"check data.image_dir (ids may omit the extension; searched {', '.join(IMAGE_EXTENSIONS)}).",
        )
        return paths


class ImageTooLarge(DataError):
    """An image over PIL's pixel limit (a possible decompression bomb); ``detail`` and ``fix`` are the parts of the
    message, for callers that name the CSV line themselves."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Image too large to decode safely: {detail}. Fix: {TOO_LARGE_FIX}")
        self.detail, self.fix = detail, TOO_LARGE_FIX


def too_large_detail(path: str | Path, err: Image.DecompressionBombError) -> str:
    """What to say about an image PIL refuses to open as a possible decompression bomb."""
    return (
        f"{path}: {err} PIL.Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS}; PIL refuses images of more than "
        "twice that many pixels"
    )


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image and convert grayscale, palette, CMYK, RGBA, 16-bit or float grayscale to RGB.

    PIL's own ``convert`` clips 16-bit and 32-bit grayscale (X-ray, MRI exports) at 255, which turns
    most of such an image white; those are rescaled to 0..255 instead (see :func:`to_8bit`).
    An image over PIL's size limit raises :class:`ImageTooLarge` (a ValueError, so a decode error to the dataset).
    """
    try:
        with Image.open(path) as image:
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                return to_8bit(image, significant_bits(image)).convert("RGB")
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(too_large_detail(path, err)) from None


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


# A marker that ends the entropy-coded data of a scan (0xFF00 is an escaped 0xFF, 0xFFD0-0xFFD7 are restarts).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Stand-in bytes after a scan (no 0xFF, so no marker); more than libjpeg reads ahead of what it decodes (8).
_PADDING = bytes(range(1, 17))
# Start-of-frame markers of JPEGs coded in one pass of Huffman-coded scan data (baseline, extended).
_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)


def _jpeg_scans(data: bytes) -> tuple[int, int, int] | None:
    """Where the data of a JPEG's last scan ends, its start-of-frame marker and its number of scans; None when
    the markers cannot be followed to an end-of-image marker (then a plain decode says what is wrong)."""
    i, frame, scans, scan_end = 2, 0, 0, 0
    while i + 2 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # end of image
            return (scan_end, frame, scans) if scans else None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = marker
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            hit = _SCAN_END.search(data, i)
            if hit is None:
                return None
            scans, scan_end, i = scans + 1, hit.start(), hit.start()
    return None


def _decode(data: bytes, draft: bool) -> np.ndarray:
    """Decode JPEG bytes (at 1/8 scale with ``draft``: libjpeg still entropy-decodes every block)."""
    with Image.open(io.BytesIO(data)) as image:
        if draft:
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return np.asarray(image)


def check_jpeg(path: str | Path) -> None:
    """Decode a JPEG to its end; an OSError when its scan data stops early.

    libjpeg takes a marker inside scan data for a warning and fills the rest of the image with zeros,
    and Pillow drops libjpeg's warnings: a JPEG cut short and closed with an end-of-image marker
    (as ``ImageFile.LOAD_TRUNCATED_IMAGES`` itself does) decodes without error. So the scan data is
    decoded without what follows it. A one-pass JPEG (baseline) is decoded at 1/8 scale with padding
    and then the end of the file: libjpeg runs out of data, and Pillow raises, only when the scan needs
    more than it has. Other JPEGs (progressive) read every scan before the first row of pixels, so the
    end of the file always fails there: they are decoded in full twice, closed right after the scan
    data and after padding; the two differ when the last scan was cut. Cuts of the last few bytes of
    scan data, which only touch the last blocks, can pass, and so can a progressive JPEG cut between two
    scans (a coarser but complete image). With ``ImageFile.LOAD_TRUNCATED_IMAGES`` set, Pillow closes a
    short one-pass JPEG itself, and it passes, as it would load.
    """
    data = Path(path).read_bytes()
    scans = _jpeg_scans(data)
    if scans is None:
        _decode(data, draft=True)
        return
    end, frame, count = scans
    if frame in _SEQUENTIAL_HUFFMAN and count == 1:
        try:
            _decode(data[:end] + _PADDING, draft=True)
        except OSError:
            raise OSError(
                "truncated or corrupt JPEG: its scan data does not decode to the last row of pixels"
            ) from None
    # 4 KiB of padding: a cut scan decodes enough of it to change pixels; a complete one skips it all.
    elif not np.array_equal(
        _decode(data[:end] + b"\xff\xd9", False), _decode(data[:end] + _PADDING * 256 + b"\xff\xd9", False)
    ):
        raise OSError("truncated JPEG: its last scan stops early (a file cut short, then closed)")
