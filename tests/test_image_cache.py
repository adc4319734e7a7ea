"""The decoded-image cache: pixels equal to a fresh decode + resize (uint8), reused by later runs without decoding,
a new entry for a changed file or image size, bad files left to ``on_bad_image``, the same batches for evaluation,
and every image modality (views, missing images, robustness sets) working from it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import build, sample_rows, write_layout
from PIL import Image

import medfusion.data.dataset as dataset_module
import medfusion.data.image_cache as image_cache
from medfusion.data import DataError
from medfusion.data.image_cache import cached_images, entry_name
from medfusion.data.images import load_rgb
from medfusion.data.transforms import decode_transform

pytestmark = pytest.mark.usefixtures("one_thread")


def textured(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> str:
    """Noise, so that resizing and cropping change every pixel."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 4096, size[::-1], dtype=np.uint16)).save(path)
    else:
        channels = {"RGB": 3, "RGBA": 4}.get(mode)
        shape = (*size[::-1], channels) if channels else size[::-1]
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    folder = tmp_path / "images"
    folder.mkdir()
    looks = [((40, 30), "RGB"), ((23, 57), "L"), ((32, 32), "RGBA"), ((50, 20), "I;16"), ((16, 16), "RGB")]
    return [textured(folder / f"im{i}.png", size, mode, seed=i) for i, (size, mode) in enumerate(looks)]


def fresh(path: str, size: int) -> np.ndarray:
    return decode_transform(size)(load_rgb(path)).numpy()


def test_cached_pixels_equal_a_fresh_decode_and_resize(tmp_path: Path, images: list[str]) -> None:
    entry = cached_images(tmp_path / "cache", "image", [*images, None], 24)
    assert entry.pixels.dtype == np.uint8 and entry.pixels.shape == (6, 3, 24, 24)
    assert entry.stored.tolist() == [True] * 5 + [False]
    for i, path in enumerate(images):
        np.testing.assert_array_equal(entry.image(i).numpy(), fresh(path, 24))
    assert entry.image(5) is None


def test_a_later_run_decodes_nothing(tmp_path: Path, images: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    first = cached_images(tmp_path / "cache", "image", images, 24)
    monkeypatch.setattr(image_cache, "load_rgb", lambda path: pytest.fail(f"decoded {path} again"))
    again = cached_images(tmp_path / "cache", "image", images, 24)
    np.testing.assert_array_equal(np.asarray(again.pixels), np.asarray(first.pixels))
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_changed_file_or_size_makes_a_new_entry(tmp_path: Path, images: list[str]) -> None:
    before = entry_name("image", images, 24)
    cached_images(tmp_path / "cache", "image", images, 24)
    assert entry_name("image", images, 32) != before
    assert cached_images(tmp_path / "cache", "image", images, 32).pixels.shape[-1] == 32
    textured(Path(images[0]), (40, 30), seed=99)  # same size and name, new content
    stat = os.stat(images[0])
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert entry_name("image", images, 24) != before
    entry = cached_images(tmp_path / "cache", "image", images, 24)
    np.testing.assert_array_equal(entry.image(0).numpy(), fresh(images[0], 24))
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_many_images_are_cached_over_processes_with_the_same_pixels(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    paths = [textured(folder / f"{i}.png", (12 + i % 5, 10), seed=i) for i in range(300)]
    paths[17] = textured(folder / "bad.png", (8, 8))
    Path(paths[17]).write_bytes(b"broken")
    parallel = cached_images(tmp_path / "a", "image", paths, 8)
    image_cache_workers = image_cache.worker_count
    try:
        image_cache.worker_count = lambda count: 0
        serial = cached_images(tmp_path / "b", "image", paths, 8)
    finally:
        image_cache.worker_count = image_cache_workers
    np.testing.assert_array_equal(np.asarray(parallel.pixels), np.asarray(serial.pixels))
    assert parallel.stored.sum() == 299 and not parallel.stored[17]


def layout_with_texture(tmp_path: Path, n: int = 12):
    layout = write_layout(tmp_path / "data", sample_rows(n))
    for i, path in enumerate(sorted(layout.image_dir.glob("*.png"))):
        textured(path, (20 + i, 14), seed=i)
    return layout


def test_evaluation_batches_equal_the_uncached_ones(tmp_path: Path) -> None:
    layout = layout_with_texture(tmp_path)
    plain = build(layout, image_size=16)
    cached = build(layout, image_size=16, image_cache=str(tmp_path / "cache"))
    for dm in (plain, cached):
        dm.setup("fit")
    for a, b in zip(plain.val_dataloader(), cached.val_dataloader(), strict=True):
        assert a["id"] == b["id"]
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)


def test_training_reads_the_cache_not_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = layout_with_texture(tmp_path)
    dm = build(layout, image_size=16, augment=True, image_cache=str(tmp_path / "cache"))
    dm.setup("fit")
    monkeypatch.setattr(dataset_module, "load_rgb", lambda path: pytest.fail(f"decoded {path}"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["image"].std() > 0.1  # textured, augmented, normalised


def test_a_bad_file_is_still_reported_as_without_the_cache(tmp_path: Path) -> None:
    layout = layout_with_texture(tmp_path)
    dm = build(layout, image_size=16, verify_images=False, image_cache=str(tmp_path / "cache"))
    bad = dm._records["val"].images["image"][0]
    Path(bad).write_bytes(b"not an image")
    dm.setup("fit")
    with pytest.raises(DataError, match=r"Unreadable image file"):
        list(dm.val_dataloader())


def test_missing_images_views_and_robustness_sets_work_from_the_cache(tmp_path: Path) -> None:
    rows = sample_rows(12)
    for i, row in enumerate(rows):
        row["front"] = f"{row['image_id']}.png"
        row["side"] = "" if i % 3 == 0 else f"{row['image_id']}.png"
    layout = write_layout(tmp_path / "views", rows)
    for i, path in enumerate(sorted(layout.image_dir.glob("*.png"))):
        textured(path, (20 + i, 14), seed=i)
    options = {
        "image_columns": {"front": "front", "side": "side"},
        "allow_missing": ["side"],
        "robustness": True,
        "image_size": 16,
        "text_json": None,
    }
    plain, cached = build(layout, **options), build(layout, **options, image_cache=str(tmp_path / "cache"))
    for dm in (plain, cached):
        dm.setup("test")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one entry per view of the test set
    for name in ("test", "test_no_side", "test_no_front"):
        loaders = plain._loader(plain.datasets[name], False), cached._loader(cached.datasets[name], False)
        for a, b in zip(*loaders, strict=True):
            assert torch.equal(a["present"]["side"], b["present"]["side"])
            torch.testing.assert_close(a["front"], b["front"], rtol=0, atol=0)
            torch.testing.assert_close(a["side"], b["side"], rtol=0, atol=0)
