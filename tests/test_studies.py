"""Study-level samples: a study's rows are one sample (never split apart, counted once), its rows must agree, its
images are pooled without the padding counting, and a study model fits and predicts one row per study."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import pytest
import torch
from data_helpers import data_error
from PIL import Image

from medfusion.cli import main
from medfusion.data import ConfigError, MultimodalDataModule
from medfusion.encoders import ImageEncoder, StudyEncoder

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).parents[1] / "configs"


def write_studies(root: Path, studies: int = 24, label_of=None) -> Path:
    """Study ``s`` has ``1 + s % 4`` images (grey level 10 * j + s) and label a/b by its parity."""
    (root / "images").mkdir(parents=True)
    rows = []
    for s in range(studies):
        for j in range(1 + s % 4):
            image_id = f"st{s:02d}_{j}"
            Image.new("RGB", (16, 16), (10 * j + s,) * 3).save(root / "images" / f"{image_id}.png")
            label = label_of(s, j) if label_of else "ab"[s % 2]
            rows.append({"image_id": image_id, "study": f"st{s:02d}", "label": label, "patient": f"p{s // 2}"})
    with (root / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def module(root: Path, **kwargs) -> MultimodalDataModule:
    options = {"csv_path": str(root / "samples.csv"), "image_dir": str(root / "images"), "study_column": "study",
               "image_size": 16, "batch_size": 4, "augment": False, "seed": 0, "cache": False}  # fmt: skip
    return MultimodalDataModule(**options | kwargs)


def test_a_study_is_one_sample_in_one_split_with_all_its_images(tmp_path: Path) -> None:
    dm = module(write_studies(tmp_path), group_column="patient", val_ratio=0.25, test_ratio=0.25)
    dm.setup()
    assert dm.modality_specs["image"] == {"kind": "image", "study": True}
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        dataset = dm.datasets[split]
        for i, study in enumerate(dataset.ids):
            assert study not in seen, f"{study} in {seen.get(study)} and {split}"
            seen[study] = split
            s = int(study[2:])
            assert dataset[i]["image"].shape == (1 + s % 4, 3, 16, 16)
            assert [Path(p).stem for p in dataset.stacks["image"][i]] == [f"{study}_{j}" for j in range(1 + s % 4)]
    assert len(seen) == 24  # every study once, none lost
    patients = {split: {int(s[2:]) // 2 for s, where in seen.items() if where == split} for split in ("train", "test")}
    assert not patients["train"] & patients["test"]  # and a patient's studies stay together


def test_study_metrics_and_predictions_count_each_study_once(tmp_path: Path) -> None:
    root = write_studies(tmp_path / "data")
    args = ["--config", str(CONFIGS / "demo_study.yaml"), "--data=medfusion.data.MultimodalDataModule",
            f"--data.csv_path={root / 'samples.csv'}", f"--data.image_dir={root / 'images'}",
            "--data.study_column=study", "--data.id_column=image_id", "--data.image_size=32", "--data.batch_size=4",
            "--data.num_workers=0", "--data.val_ratio=0.25", "--data.test_ratio=0.25", "--data.augment=false",
            "--model.image_encoder.model_name=test_resnet", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]  # fmt: skip
    runs = tmp_path / "runs"
    main(["fit", *args, "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={runs}"])
    run = runs / "demo" / "version_0"
    matrix = list(csv.reader((run / "evaluation" / "test_confusion_matrix.csv").open()))[1:]
    assert sum(int(x) for row in matrix for x in row[1:]) == 6  # 6 test studies (of 24), not their 15 images
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    main(["predict", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={tmp_path / 'predicted'}"])
    predicted = list(csv.DictReader((tmp_path / "predicted" / "demo" / "version_0" / "predictions.csv").open()))
    assert len(predicted) == len({r["id"] for r in predicted}) == 6 and all(r["id"].startswith("st") for r in predicted)


def test_rows_of_a_study_with_different_labels_are_refused_naming_them(tmp_path: Path) -> None:
    root = write_studies(tmp_path, label_of=lambda s, j: "b" if (s, j) == (2, 1) else "ab"[s % 2])
    data_error(lambda: module(root), "Studies whose rows have different labels", "study 'st02'", "line")


def test_study_max_images_keeps_the_first_images(tmp_path: Path) -> None:
    dm = module(write_studies(tmp_path), study_max_images=2)
    dm.setup("fit")
    assert max(len(stack) for stack in dm.datasets["train"].stacks["image"]) == 2
    with pytest.raises(ConfigError, match=r"study_max_images needs data\.study_column"):
        module(tmp_path, study_column=None, study_max_images=2)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_padding_never_changes_a_study_and_the_weights_cover_its_images(pooling: str) -> None:
    torch.manual_seed(0)
    encoder = StudyEncoder(partial(ImageEncoder, "test_resnet"), pooling).eval()
    images = torch.randn(2, 3, 3, 32, 32)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        padded = encoder(images, mask).pooled
        weights = encoder.image_weights
        alone = encoder(images[:1, :2], mask[:1, :2]).pooled
        garbage = images.clone()
        garbage[0, 2] = 100.0  # what lies in the padding is never read
        again = encoder(garbage, mask).pooled
    torch.testing.assert_close(padded[:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, padded)
    assert weights[0, 2] == 0 and torch.allclose(weights.sum(-1), torch.ones(2))
