"""2.5D slice stacks: neighbours found by number with edges replicated (never zeros), listed slices checked, one
augmentation for every slice of a stack, the image cache, and the encoder as channels or as a sequence."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import data_error
from PIL import Image

from medfusion.cli import main
from medfusion.data import ConfigError, MultimodalDataModule
from medfusion.data.slices import slice_specs
from medfusion.encoders import ImageEncoder, SliceStackEncoder
from medfusion.interpret import explain_batch
from medfusion.models import ImageClassifier

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).parents[1] / "configs"


def write_volumes(root: Path, cases: int = 12, slices: int = 5, centre: int | None = None, **extra) -> Path:
    """Each case a folder of ``slices`` files ``s<jj>.png`` whose grey level is 40 * j + case; rows name slice
    ``centre`` (default: the middle)."""
    rows = []
    for case in range(cases):
        folder = root / "images" / f"c{case:02d}"
        folder.mkdir(parents=True)
        for j in range(slices):
            Image.new("RGB", (16, 16), (40 * j + case,) * 3).save(folder / f"s{j:02d}.png")
        middle = slices // 2 if centre is None else centre
        rows.append({"image_id": f"c{case:02d}", "label": "ab"[case % 2], "path": f"c{case:02d}/s{middle:02d}.png"})
        rows[-1] |= {key: value(case) for key, value in extra.items()}
    with (root / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def module(root: Path, **kwargs) -> MultimodalDataModule:
    options = {"csv_path": str(root / "samples.csv"), "image_dir": str(root / "images"), "image_column": "path",
               "image_size": 16, "batch_size": 4, "augment": False, "seed": 0, "cache": False}  # fmt: skip
    return MultimodalDataModule(**options | kwargs)


def levels(stack: torch.Tensor) -> list[int]:
    """The grey level of each slice of a normalised stack, back in 0..255."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = stack[:, :, 0, 0] * std + mean
    return [round(float(v) * 255) for v in pixels[:, 0]]


def test_neighbours_are_found_by_number_and_a_volume_edge_replicates_the_nearest_slice(tmp_path: Path) -> None:
    dm = module(write_volumes(tmp_path, centre=0), slices={"image": {"neighbours": 2}})
    assert dm.modality_specs["image"] == {"kind": "image", "slices": 5}
    with pytest.warns(UserWarning, match=r"slice\(s\) .* lie beyond a volume's edge: the nearest slice is repeated"):
        dm.setup("fit")
    dataset = dm.datasets["train"]
    sample = dataset[0]
    case = int(dataset.ids[0][1:])
    assert sample["image"].shape == (5, 3, 16, 16)
    # slices -2 and -1 do not exist: slice 0 stands in for them; never a zero (black) slice
    assert levels(sample["image"]) == [case, case, case, 40 + case, 80 + case]
    assert dm.data_report["replicated_slices/train"] == 2 * len(dataset)


def test_a_middle_slice_reads_its_real_neighbours(tmp_path: Path) -> None:
    dm = module(write_volumes(tmp_path, slices=7, centre=3), slices={"image": {"neighbours": 1}})
    dm.setup("fit")
    case = int(dm.datasets["train"].ids[0][1:])
    assert levels(dm.datasets["train"][0]["image"]) == [80 + case, 120 + case, 160 + case]
    assert dm.data_report["replicated_slices/train"] == 0


def test_a_slice_list_naming_a_missing_file_is_refused_naming_file_and_row(tmp_path: Path) -> None:
    def listed(case: int) -> str:
        return f"c{case:02d}/s00.png;c{case:02d}/s01.png;c{case:02d}/{'s09' if case == 3 else 's02'}.png"

    root = write_volumes(tmp_path, files=listed)
    data_error(lambda: module(root, slices={"image": {"column": "files"}}), "c03/s09.png", "samples.csv", "line 5")


def test_listed_slices_are_read_in_order_and_must_be_as_many_on_every_row(tmp_path: Path) -> None:
    root = write_volumes(tmp_path / "ok", files=lambda c: f"c{c:02d}/s04.png; c{c:02d}/s00.png")
    dm = module(root, slices={"image": {"column": "files"}})
    dm.setup("fit")
    case = int(dm.datasets["train"].ids[0][1:])
    assert levels(dm.datasets["train"][0]["image"]) == [160 + case, case]
    uneven = write_volumes(
        tmp_path / "uneven", files=lambda c: ";".join(f"c{c:02d}/s{j:02d}.png" for j in range(2 + c % 2))
    )
    data_error(lambda: module(uneven, slices={"image": {"column": "files"}}), "another number of slices", "line 3")


def test_a_name_without_a_number_is_refused(tmp_path: Path) -> None:
    root = write_volumes(tmp_path)
    for path in (root / "images").rglob("s02.png"):
        path.rename(path.with_name("centre.png"))
    text = (root / "samples.csv").read_text().replace("s02.png", "centre.png")
    (root / "samples.csv").write_text(text)
    data_error(lambda: module(root, slices={"image": {"neighbours": 1}}), "holds no slice number", "centre.png")


def test_slice_options_are_checked() -> None:
    for options, needle in [({"frontal": {"neighbours": 1}}, "not an image modality"), ({"image": {}}, "needs"),
                            ({"image": {"neighbours": 0}}, "whole number >= 1")]:  # fmt: skip
        with pytest.raises(ConfigError, match=needle):
            slice_specs(options, ["image"])


def test_every_slice_of_a_stack_gets_the_same_random_augmentation(tmp_path: Path) -> None:
    root = write_volumes(tmp_path, slices=3)
    for case in range(12):  # the same noise image in every slice
        noise = np.random.default_rng(case).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        for j in range(3):
            Image.fromarray(noise).save(root / "images" / f"c{case:02d}" / f"s{j:02d}.png")
    dm = module(root, slices={"image": {"neighbours": 1}}, augment=True)
    dm.setup("fit")
    torch.manual_seed(0)
    stack = dm.datasets["train"][0]["image"]
    assert torch.equal(stack[0], stack[1]) and torch.equal(stack[1], stack[2])
    assert not torch.equal(stack[0], dm.datasets["train"][0]["image"][0])  # and it is random


def test_the_image_cache_holds_every_slice(tmp_path: Path) -> None:
    root = write_volumes(tmp_path, centre=1)
    plain = module(root, slices={"image": {"neighbours": 2}})
    cached = module(root, slices={"image": {"neighbours": 2}}, image_cache=str(tmp_path / "cache"))
    for dm in (plain, cached):
        dm.setup("fit")
    assert cached.datasets["train"].cached["image"].stored.all()
    for i in range(len(plain.datasets["train"])):
        assert torch.equal(plain.datasets["train"][i]["image"], cached.datasets["train"][i]["image"])


def test_channels_mode_spreads_pretrained_rgb_weights_so_identical_slices_give_the_rgb_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = ImageEncoder("test_resnet").eval()
    weights = tmp_path / "weights.pth"
    torch.save(rgb.model.state_dict(), weights)
    stacked = SliceStackEncoder(partial(ImageEncoder, "test_resnet", checkpoint_path=str(weights)), 5, "channels")
    stacked.load_pretrained()
    stacked.eval()
    grey = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = rgb(grey.expand(2, 3, 32, 32)).pooled
        got = stacked(grey.expand(2, 3, 32, 32).unsqueeze(1).expand(2, 5, 3, 32, 32)).pooled
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["transformer", "attention"])
def test_sequence_mode_weighs_every_slice_and_trains_every_part(pooling: str) -> None:
    torch.manual_seed(0)
    encoder = SliceStackEncoder(partial(ImageEncoder, "test_resnet"), 5, "sequence", pooling)
    stack = torch.randn(3, 5, 3, 32, 32)
    out = encoder(stack, tokens=True, levels=True)
    assert out.pooled.shape == (3, encoder.out_dim) and out.tokens.shape == (3, 5, encoder.out_dim)
    assert [level.shape[0] for level in out.levels] == [3] * len(encoder.level_dims)
    weights = encoder.slice_weights
    assert weights.shape == (3, 5) and torch.allclose(weights.sum(-1), torch.ones(3))
    out.pooled.sum().backward()
    assert encoder.position.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.backbone.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="a stack of 5 slices"):
        encoder(stack[:, :4])


def test_explain_shows_the_centre_slice_and_the_slice_weights(tmp_path: Path) -> None:
    dm = module(write_volumes(tmp_path, slices=5), slices={"image": {"neighbours": 2}}, image_size=32)
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=2, modalities=dm.modality_specs, image_encoder=partial(ImageEncoder, "test_resnet")
    )
    batch = dm.collate([dm.datasets["train"][i] for i in range(2)])
    explained = explain_batch(model, batch)
    assert explained[0].images["image"].shape == (3, 32, 32) and not explained[0].cams
    assert len(explained[0].slices["image"]) == 5 and sum(explained[0].slices["image"]) == pytest.approx(1.0)


@pytest.mark.slow
def test_the_25d_demo_fits_from_the_image_cache_and_predicts_from_the_checkpoint(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "demo_25d.yaml"), f"--data.root={tmp_path / 'data'}", "--data.num_samples=40",
            "--data.demo_image_size=32", "--data.image_size=32", "--data.batch_size=8", "--data.num_workers=0",
            "--model.image_encoder.model_name=test_resnet", "--model.slice_mode=channels",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip
    cache = f"--data.image_cache={tmp_path / 'cache'}"
    main(["fit", *args, cache, "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    best = next((tmp_path / "runs" / "demo" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "predicted"
    main(["predict", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={out}"])
    predicted = list(csv.DictReader((out / "demo" / "version_0" / "predictions.csv").open()))
    assert len(predicted) == len({r["id"] for r in predicted}) > 0


def test_packing_slice_stacks_into_shards_is_refused_with_the_fix(tmp_path: Path) -> None:
    from medfusion.data.shards import sets_to_pack

    dm = module(write_volumes(tmp_path), slices={"image": {"neighbours": 1}})
    dm.setup(None)
    with pytest.raises(ConfigError, match="not packed yet"):
        sets_to_pack(dm)
