"""Cost per image of the up-front image check (``verify_images``) on HAM10000-sized JPEGs.

    python benchmarks/verify_images.py [--num_images 300] [--repeats 3]

Writes ``--num_images`` textured 600x450 JPEGs (quality 90, 4:2:0, as HAM10000 ships them), once baseline and
once progressive, to a temporary folder, and times per image, in the same run (best of ``--repeats`` passes
over warm files):
  - old check: ``Image.verify`` (a JPEG's header only) and a test that the file ends with FFD9, which lets a
    file that was cut short and closed with FFD9 pass;
  - new check: ``verify_images`` (``verify``, then :func:`medfusion.data.images.check_jpeg`: a 1/8-scale decode
    of the scan data for baseline JPEGs, two full decodes for progressive ones);
  - full decode: ``Image.load`` at full size, what a training step pays for the same file.
The last column says whether each check catches the same files cut in half and closed with FFD9.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from medfusion.data import DataError
from medfusion.data.verify import verify_images


def write_jpegs(folder: Path, count: int, progressive: bool) -> list[Path]:
    """``count`` 600x450 JPEGs with smooth structure and sensor-like noise (not trivially compressible)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:450, 0:600].astype(np.float32)
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        base = np.stack([128 + 90 * np.sin(x / (30 + i % 17) + p) * np.cos(y / (20 + i % 11) + p) for p in phase], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"ISIC_{i:07d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90, subsampling=2, progressive=progressive)
        paths.append(path)
    return paths


def old_check(path: Path) -> None:
    """The check before: ``verify`` and, only for a JPEG without FFD9 at its end, a full decode."""
    with Image.open(path) as image:
        kind = image.format
        image.verify()
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64))
        ends = f.read().rstrip(b"\x00").endswith(b"\xff\xd9")
    if kind == "JPEG" and not ends:
        with Image.open(path) as image:
            image.load()


def full_decode(path: Path) -> None:
    with Image.open(path) as image:
        image.load()


def new_check(path: Path) -> None:
    verify_images([path], "benchmark.csv")


def ms_per_image(check: Callable[[Path], None], paths: list[Path], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            check(path)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(paths)


def catches_cut_file(check: Callable[[Path], None], path: Path) -> bool:
    """Whether ``check`` rejects ``path`` cut in half and closed with an end-of-image marker."""
    data = path.read_bytes()
    cut = path.with_name("cut.jpg")
    cut.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    try:
        check(cut)
    except (OSError, DataError):
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    checks = {"old check": old_check, "new check": new_check, "full decode": full_decode}
    print(f"{args.num_images} JPEGs of 600x450, ms per image (best of {args.repeats})")
    print(f"{'JPEG':<12} {'check':<12} {'ms/image':>9} {'x old':>7}  catches cut+FFD9")
    with tempfile.TemporaryDirectory() as tmp:
        for progressive in (False, True):
            kind = "progressive" if progressive else "baseline"
            folder = Path(tmp, kind)
            folder.mkdir()
            paths = write_jpegs(folder, args.num_images, progressive)
            kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
            ms_per_image(full_decode, paths, 1)  # warm the page cache
            times = {name: ms_per_image(check, paths, args.repeats) for name, check in checks.items()}
            for name, check in checks.items():
                ratio = times[name] / times["old check"]
                caught = "yes" if catches_cut_file(check, paths[0]) else "no"
                print(f"{kind:<12} {name:<12} {times[name]:>9.3f} {ratio:>7.1f}  {caught}")
            print(f"{kind:<12} (mean file size {kib:.0f} KiB)")


if __name__ == "__main__":
    main()
