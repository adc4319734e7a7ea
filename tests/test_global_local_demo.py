"""The global-local demo holds what its docstring claims (the texture only in the crop, the context only around
it), and the crop modality works end to end: fit with the image cache, predict from the checkpoint alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfusion.cli import main
from medfusion.data import GlobalLocalDemoDataModule
from medfusion.data.demo.global_local import make_global_local_data
from medfusion.data.transforms import eval_transform

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).parents[1] / "configs"


def stripe_contrast(pixels: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference between neighbouring rows and between neighbouring columns."""
    gray = pixels.float().mean(0)
    return float(gray.diff(dim=0).abs().mean()), float(gray.diff(dim=1).abs().mean())


def test_the_texture_shows_in_the_crop_only_and_the_spots_never_do(tmp_path: Path) -> None:
    out = make_global_local_data(tmp_path / "gl", num_samples=16, seed=3)
    again = make_global_local_data(tmp_path / "again", num_samples=16, seed=3)
    assert (out / "metadata.csv").read_text() == (again / "metadata.csv").read_text()
    dm = GlobalLocalDemoDataModule(root=str(out), num_samples=16, demo_seed=3, augment=False, val_ratio=0.25,
                                   test_ratio=0.25, cache=False)  # fmt: skip
    rows = {r["image_id"]: r for r in csv.DictReader((out / "metadata.csv").open())}
    for image_id, row in rows.items():
        pixels = np.asarray(Image.open(out / "images" / f"{image_id}.png"))
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        crop = torch.from_numpy(pixels[y0:y1, x0:x1].copy()).permute(2, 0, 1)
        across_rows, across_columns = stripe_contrast(crop)
        if row["label"].endswith("horizontal"):  # rows alternate: strong across rows, weak along them
            assert across_rows > 3 * across_columns
        else:
            assert across_columns > 3 * across_rows
        inside = np.zeros(pixels.shape[:2], bool)
        inside[y0:y1, x0:x1] = True
        dark = (pixels[..., 0] < 100) & (pixels[..., 1] < 70)  # satellite colour (lesion pixels are striped)
        outside_dark = int((dark & ~inside).sum())
        assert (outside_dark > 0) == row["label"].startswith("spotted"), image_id
        # the 64 px view of the whole image: the stripes are averaged away, in both directions alike
        small = (eval_transform(64)(Image.fromarray(pixels)) * 255).round()
        cx, cy, r = (x0 + x1) // 8, (y0 + y1) // 8, (x1 - x0) // 16
        lesion = small[:, cy - r : cy + r, cx - r : cx + r]
        across_rows, across_columns = stripe_contrast(lesion)
        assert max(across_rows, across_columns) < 2.5 * min(across_rows, across_columns) + 2
    assert dm.modalities == ["image", "local"] and len(dm.class_names) == 4


@pytest.mark.slow
def test_a_crop_modality_fits_from_the_image_cache_and_predicts_from_the_checkpoint(tmp_path: Path) -> None:
    args = [
        "--config",
        str(CONFIGS / "demo_global_local.yaml"),
        f"--data.root={tmp_path / 'data'}",
        "--data.num_samples=48",
        "--data.demo_image_size=128",
        "--data.image_size=32",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--model.image_encoder.model_name=test_resnet",
        "--model.dual_expert=local",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cache = [f"--data.image_cache={tmp_path / 'image_cache'}"]
    main(["fit", *args, *cache, "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    run = tmp_path / "runs" / "demo" / "version_0"
    assert {p.name.split("-")[0] for p in (tmp_path / "image_cache").iterdir()} == {"image", "local"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test/macro_f1"] <= 1
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    predict_csv = tmp_path / "new.csv"
    rows = list(csv.DictReader((tmp_path / "data" / "metadata.csv").open()))[:5]
    with predict_csv.open("w", newline="") as f:  # a new site's table: ids and boxes, no labels
        writer = csv.DictWriter(f, ["image_id", "x0", "y0", "x1", "y1"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    main([
        "predict", *args, f"--ckpt_path={best}", f"--data.predict_csv={predict_csv}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'predicted'}",
    ])  # fmt: skip
    predicted = list(csv.DictReader((tmp_path / "predicted" / "demo" / "version_0" / "predictions.csv").open()))
    assert [r["id"] for r in predicted] == [r["image_id"] for r in rows]
