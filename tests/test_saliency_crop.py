"""Saliency crops (``model.saliency_crop``): the crop holds the full-resolution pixels of the window the global
view's class-activation map points at, every part trains, the options are checked, and a model with one works
from the CLI to a prediction from its checkpoint and an explanation drawing its box."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import pytest
import torch
from matplotlib.patches import Rectangle

from medfusion.cli import main
from medfusion.data.errors import ConfigError
from medfusion.encoders import ImageEncoder
from medfusion.interpret import explain_batch, explanation_figure
from medfusion.models import MultimodalClassifier
from medfusion.models.feature_cache import check_cacheable
from medfusion.models.saliency import SaliencyCrop, SaliencyOptions

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).parents[1] / "configs"
ENCODER = partial(ImageEncoder, "test_resnet")


def _model(**options) -> MultimodalClassifier:
    crop = {"name": "local", "source": "image", "global_size": 32, "window": 0.25, **options}
    return MultimodalClassifier(
        num_classes=3, modalities={"image": {"kind": "image"}}, image_encoder=ENCODER, saliency_crop=crop
    )


def test_the_crop_holds_the_pixels_of_the_window_at_full_resolution() -> None:
    crop = SaliencyCrop(SaliencyOptions(window=0.25), ImageEncoder("test_resnet"), 3)
    full = torch.randn(3, 3, 128, 128)
    boxes = torch.tensor([[0.25, 0.5, 0.5, 0.75], [0.1, 0.3, 0.35, 0.55], [0.9, 0.9, 1.15, 1.15]])
    cut = crop.cut(full, boxes)
    assert cut.shape == (3, 3, 32, 32)
    assert torch.equal(cut[0], full[0, :, 64:96, 32:64])
    assert torch.equal(cut[1], full[1, :, 38:70, 13:45])  # corner snapped to a whole pixel: no interpolation
    assert torch.equal(cut[2], full[2, :, 96:, 96:])  # a window past the edge is moved inside


def test_the_box_is_the_window_around_the_peak_of_the_top_class_map() -> None:
    encoder = ImageEncoder("test_resnet")
    crop = SaliencyCrop(SaliencyOptions(window=0.25), encoder, 2)
    channels = crop.cam_head.in_features
    with torch.no_grad():
        crop.cam_head.weight.zero_()
        crop.cam_head.weight[1, 0] = 1.0  # class 1 reads channel 0, class 0 nothing: class 1 is the top class
        crop.cam_head.bias.zero_()
    stage = torch.zeros(2, channels, 4, 4)
    stage[0, 0, 1, 2] = 5.0  # peak at row 1, column 2
    stage[1, 0, 0, 0] = 5.0  # peak in the corner: the window stays inside the image
    crop._map = stage
    logits, maps = crop.cam(crop.stage_tokens(torch.ones(2, dtype=torch.bool)))
    assert torch.allclose(logits[:, 1], maps.flatten(1).mean(1))  # CAM: the logit is the map's mean (+ bias 0)
    assert logits.argmax(1).tolist() == [1, 1]
    boxes = crop.boxes(maps)
    assert torch.allclose(boxes[0], torch.tensor([0.5, 0.25, 0.75, 0.5]))
    assert torch.allclose(boxes[1], torch.tensor([0.0, 0.0, 0.25, 0.25]))


def test_the_cam_the_crop_and_both_encoders_train_and_absent_images_are_never_encoded() -> None:
    model = _model().train()
    batch = {
        "image": torch.randn(4, 3, 128, 128),
        "label": torch.tensor([0, 1, 2, 0]),
        "id": list("abcd"),
        "present": {"image": torch.tensor([True, False, True, True])},
    }
    logits, loss, terms = model.training_objective(batch)
    assert logits.shape == (4, 3) and "loss_saliency" in terms
    assert model.saliency.last_boxes.shape == (4, 4) and model.saliency._map is None  # the map is let go of
    loss.backward()
    for part in (model.saliency.cam_head, model.encoders["image"], model.encoders["local"]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.batch_modalities == ["image"] and list(model.encoders) == ["image", "local"]
    model.zero_grad()
    nobody = {**batch, "present": {"image": torch.zeros(4, dtype=torch.bool)}}
    logits, loss, terms = model.training_objective(nobody)
    assert model.saliency.last_logits is None and float(terms["loss_saliency"]) == 0.0
    loss.backward()  # connected: every CAM parameter gets a (zero) gradient, as DDP expects
    assert all(p.grad is not None for p in model.saliency.cam_head.parameters())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"source": "text"}, "not a plain image modality"),
        ({"name": "image"}, "already a modality"),
        ({"window": 0.0}, "0 < window <= 1"),
        ({"cam_stage": 9}, "cam_stage"),
        ({"zoom": 2}, "keys among"),
    ],
)
def test_bad_saliency_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _model(**options)


def test_the_feature_cache_refuses_a_saliency_crop() -> None:
    model = _model()
    model.hparams.freeze_encoders = True
    with pytest.raises(ValueError, match="saliency_crop"):
        check_cacheable(model)


def test_explain_draws_the_saliency_box_on_the_global_image() -> None:
    model = _model()
    batch = {"image": torch.randn(2, 3, 128, 128), "label": torch.tensor([0, 1]), "id": ["a", "b"]}
    explanations = explain_batch(model, batch)
    for e, box in zip(explanations, model.saliency.last_boxes.tolist(), strict=True):
        assert e.boxes == {"image": {"local": pytest.approx(box)}}
    figure = explanation_figure(explanations[0], ["x", "y", "z"])
    image_axes = next(ax for ax in figure.axes if ax.get_title() == "image")
    assert [type(p) for p in image_axes.patches] == [Rectangle]


@pytest.mark.slow
def test_a_saliency_model_fits_from_the_cli_and_predicts_from_its_checkpoint(tmp_path: Path) -> None:
    args = [
        "--config",
        str(CONFIGS / "demo_global_local.yaml"),
        f"--data.root={tmp_path / 'data'}",
        "--data.num_samples=48",
        "--data.demo_image_size=128",
        "--data.image_size=128",
        "--data.crops={}",
        "--data.modalities=[image]",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--model.image_encoder.model_name=test_resnet",
        "--model.saliency_crop={name: local, source: image, global_size: 32}",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    main(["fit", *args, "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    run = tmp_path / "runs" / "demo" / "version_0"
    logged = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_saliency" in logged
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    rows = list(csv.DictReader((tmp_path / "data" / "metadata.csv").open()))[:5]
    predict_csv = tmp_path / "new.csv"
    with predict_csv.open("w", newline="") as f:  # no boxes: the model finds its crop
        writer = csv.DictWriter(f, ["image_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    main([
        "predict", *args, f"--ckpt_path={best}", f"--data.predict_csv={predict_csv}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'predicted'}",
    ])  # fmt: skip
    predicted = list(csv.DictReader((tmp_path / "predicted" / "demo" / "version_0" / "predictions.csv").open()))
    assert [r["id"] for r in predicted] == [r["image_id"] for r in rows]
