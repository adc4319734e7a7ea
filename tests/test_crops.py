"""Global-local input: a crop modality cut from the image by a box (pixels or fractions) or a mask's bounding box,
clipped with a warning, refused with the file and row when it cannot be cut, and the same from the image cache."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import build, data_error, sample_rows, write_layout
from PIL import Image

from medfusion.cli import crop_boxes, find_places
from medfusion.data import ConfigError
from medfusion.data.crops import crop_specs, mask_box, pixel_box
from medfusion.encoders import ImageEncoder
from medfusion.interpret import explain_batch, explanation_figure
from medfusion.models import MultimodalClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, HEIGHT = 80, 60


def gradient_images(image_dir: Path, ids: list[str]) -> None:
    """Each image's red channel is x, its green y (and blue the sample), so a crop shows where it was cut."""
    x, y = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    for i, sample_id in enumerate(ids):
        pixels = np.stack([x * 3, y * 4, np.full_like(x, i * 9)], axis=-1).astype(np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{sample_id}.png")


def layout_with_boxes(tmp_path: Path, box: tuple[float, ...], fractions: bool = False, **extra: str):
    rows = sample_rows(12)
    for row in rows:
        scale = (WIDTH, HEIGHT, WIDTH, HEIGHT) if fractions else (1, 1, 1, 1)
        row.update({k: str(v / s) for k, v, s in zip(("x0", "y0", "x1", "y1"), box, scale, strict=True)} | extra)
    layout = write_layout(tmp_path, rows)
    gradient_images(layout.image_dir, [r["image_id"] for r in rows])
    return layout


def crops(box_columns: bool = True, **spec) -> dict:
    return {"local": {"source": "image", **({"box_columns": ["x0", "y0", "x1", "y1"]} if box_columns else {}), **spec}}


def local_images(dm) -> torch.Tensor:
    dm.setup("fit")
    dataset = dm.datasets["train"]
    return torch.stack([dataset[i]["local"] for i in range(len(dataset))])


def cut(pixels_box: tuple[int, int, int, int]) -> np.ndarray:
    """What the crop of a gradient image must hold, as (red = 3x, green = 4y) ranges."""
    x0, y0, x1, y1 = pixels_box
    return np.array([3 * x0, 3 * (x1 - 1), 4 * y0, 4 * (y1 - 1)])


def extent(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image).astype(int)
    return np.array([pixels[..., 0].min(), pixels[..., 0].max(), pixels[..., 1].min(), pixels[..., 1].max()])


def test_a_box_in_pixels_and_in_fractions_gives_the_same_crop(tmp_path: Path) -> None:
    box = (20, 12, 60, 48)
    in_pixels = build(layout_with_boxes(tmp_path / "px", box), crops=crops(), text_json=None)
    in_fractions = build(layout_with_boxes(tmp_path / "fr", box, True), crops=crops(units="fractions"), text_json=None)
    assert in_pixels.modalities == ["image", "local"]
    assert torch.equal(local_images(in_pixels), local_images(in_fractions))
    dataset = in_pixels.datasets["train"]
    image = dataset.load_image("local", 0)
    assert image.size == (40, 36)
    np.testing.assert_array_equal(extent(image), cut(box))
    assert dataset.load_image("image", 0).size == (WIDTH, HEIGHT)  # the global view stays whole


def test_a_margin_grows_the_box_on_each_side() -> None:
    assert pixel_box((20, 10, 40, 30), "pixels", 0.25, 80, 60) == ((15, 5, 45, 35), False)
    assert pixel_box((0.25, 0.5, 0.5, 1.0), "fractions", 0.0, 80, 60) == ((20, 30, 40, 60), False)


def test_a_mask_gives_its_bounding_box(tmp_path: Path) -> None:
    layout = layout_with_boxes(tmp_path, (25, 10, 50, 40), mask_path="")
    masks = layout.image_dir / "masks"
    masks.mkdir()
    rows = []
    for row in layout.rows:
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[10:40, 25:50] = 255
        mask[20, 30] = 0  # a hole changes no bounding box
        Image.fromarray(mask).save(masks / f"{row['image_id']}_mask.png")
        rows.append({**row, "mask_path": f"masks/{row['image_id']}_mask.png"})
    layout = write_layout(tmp_path, rows)
    gradient_images(layout.image_dir, [r["image_id"] for r in rows])
    from_masks = build(layout, crops=crops(box_columns=False, mask_column="mask_path"), text_json=None)
    from_boxes = build(layout, crops=crops(), text_json=None)
    assert torch.equal(local_images(from_masks), local_images(from_boxes))
    assert mask_box(Image.fromarray(np.zeros((4, 4), np.uint8))) is None


def test_a_crop_reaching_outside_the_image_is_clipped_with_a_warning(tmp_path: Path) -> None:
    dm = build(layout_with_boxes(tmp_path, (-10, 30, 70, 90)), crops=crops(), text_json=None)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    with pytest.warns(UserWarning, match=r"'local' crop of .*s0\d\d\.png \(.*samples\.csv line \d+\) reaches outside"):
        image = dataset.load_image("local", 0)
    np.testing.assert_array_equal(extent(image), cut((0, 30, 70, HEIGHT)))


def test_a_box_with_x1_not_after_x0_is_refused_naming_file_and_rows(tmp_path: Path) -> None:
    layout = layout_with_boxes(tmp_path, (40, 10, 40, 30))
    data_error(lambda: build(layout, crops=crops(), text_json=None), "x1 <= x0", "samples.csv", "line 2")


def test_a_mask_of_another_size_than_its_image_is_refused_naming_both(tmp_path: Path) -> None:
    rows = [{**row, "mask_path": f"masks/{row['image_id']}.png"} for row in sample_rows(12)]
    layout = write_layout(tmp_path, rows)
    gradient_images(layout.image_dir, [r["image_id"] for r in rows])
    (layout.image_dir / "masks").mkdir()
    for row in rows:
        Image.new("L", (WIDTH // 2, HEIGHT // 2), 255).save(layout.image_dir / row["mask_path"])
    dm = build(layout, crops=crops(box_columns=False, mask_column="mask_path"), text_json=None, id_column="image_id")
    dm.setup("fit")
    first = dm.datasets["train"]
    data_error(lambda: first[0], "mask", "is 40x30 but its image is 80x60", "samples.csv", "line")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"source": "image"}, "needs box_columns"),
        ({"source": "image", "box_columns": ["a", "b", "c"]}, "must name 4 columns"),
        ({"source": "frontal", "mask_column": "m"}, "not an image modality"),
        ({"source": "image", "mask_column": "m", "margin": -1}, "margin must be 0 or more"),
        ({"source": "image", "mask_column": "m", "box": [1, 2]}, "unknown key"),
    ],
)
def test_crop_options_are_checked(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        crop_specs({"local": options}, ["image"])


def test_the_image_cache_holds_the_crops(tmp_path: Path) -> None:
    layout = layout_with_boxes(tmp_path, (20, 12, 60, 48))
    plain = build(layout, crops=crops(), text_json=None)
    cached = build(layout, crops=crops(), text_json=None, image_cache=str(tmp_path / "cache"))
    assert torch.equal(local_images(plain), local_images(cached))
    assert {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()} == {"image", "local"}
    stored = cached.datasets["train"].cached
    assert stored["local"].stored.all() and not np.array_equal(stored["local"].pixels, stored["image"].pixels)


def test_explain_draws_the_crop_box_where_it_lies_on_the_global_view(tmp_path: Path) -> None:
    """A pixel box of an 80 x 60 image, as the model sees the image (short side to 30, centre-cropped: 40 x 30 less
    5 columns on each side), in fractions; the explanation figure draws it on the global image."""
    dm = build(layout_with_boxes(tmp_path, (20, 12, 60, 48)), crops=crops(), text_json=None, image_size=30)
    dm.setup("test")
    places = find_places(dm, None, 2)
    boxes = crop_boxes(dm, places)
    expected = [(20 * 0.5 - 5) / 30, 12 * 0.5 / 30, (60 * 0.5 - 5) / 30, 48 * 0.5 / 30]
    assert boxes == {"local": ("image", [pytest.approx(expected)] * 2)}
    model = MultimodalClassifier(num_classes=len(dm.class_names), modalities=dm.modality_specs,
                                 image_encoder=partial(ImageEncoder, "test_resnet"))  # fmt: skip
    batch = dm.collate([dataset[i] for dataset, i in places])
    explanation = explain_batch(model, batch, crop_boxes=boxes)[0]
    assert explanation.boxes == {"image": {"local": pytest.approx(expected)}}
    figure = explanation_figure(explanation, dm.class_names)
    drawn = next(ax for ax in figure.axes if ax.get_title() == "image").patches
    assert len(drawn) == 1 and drawn[0].get_width() == pytest.approx((expected[2] - expected[0]) * 30)
