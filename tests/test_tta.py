"""Test-time augmentation views and their use in the models' test/predict outputs, and the temperature."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from medfusion.data import Collate
from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.models import ImageClassifier, MultimodalClassifier, TextClassifier
from medfusion.tta import TTA_VIEWS, average_log_probs, check_views

SMALL_IMAGE = partial(ImageEncoder, "test_resnet")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only spin on a busy box


def batch_of(n: int = 6, size: int = 32, images: tuple[str, ...] = ("image",)) -> dict:
    """``n`` samples with a random image under each name of ``images`` and a short text."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        sample = {"id": f"s{i}", "label": i % 3, "present": dict.fromkeys([*images, "text"], True)}
        sample |= {name: torch.randn(3, size, size, generator=g) for name in images}
        samples.append(sample | {"text": [2, 7 + i, 3]})
    return Collate(0)(samples)


def image_model(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(num_classes=3, image_encoder=SMALL_IMAGE, **kwargs).eval()


@pytest.mark.parametrize(
    ("first", "second"), [("hflip", "hflip"), ("vflip", "vflip"), ("rot90", "rot270"), ("identity", "identity")]
)
def test_views_that_undo_each_other(first: str, second: str) -> None:
    image = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(TTA_VIEWS[second](TTA_VIEWS[first](image)), image)
    if first != "identity":
        assert not torch.equal(TTA_VIEWS[first](image), image)


def test_center_crop_zooms_in_and_keeps_the_size() -> None:
    image = torch.zeros(1, 1, 16, 16)
    image[..., 1:15, 1:15] = 1.0  # a one-pixel dark frame, cut away by the 87.5 % crop
    cropped = TTA_VIEWS["center_crop"](image)
    assert cropped.shape == image.shape
    assert cropped.min() > 0.9


def test_unknown_view_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"Unknown test-time augmentation \['flip'\].*hflip"):
        check_views(["identity", "flip"])
    with pytest.raises(ValueError, match="Unknown test-time augmentation"):
        image_model(tta=["rotate"])


def test_average_log_probs_is_the_log_of_the_mean_softmax() -> None:
    logits = [torch.randn(4, 5) for _ in range(3)]
    averaged = average_log_probs([x.log_softmax(-1) for x in logits])
    expected = torch.stack([x.softmax(-1) for x in logits]).mean(0)
    torch.testing.assert_close(averaged.softmax(-1), expected)
    torch.testing.assert_close(averaged.exp().sum(-1), torch.ones(4))


def test_tta_with_identity_views_equals_the_plain_output() -> None:
    plain, tta = image_model(), image_model(tta=["identity", "identity", "identity"])
    batch = batch_of()
    with torch.no_grad():
        expected = plain.predict_logits(batch).softmax(-1)
        logits, features = tta.evaluate(batch)
    torch.testing.assert_close(logits.softmax(-1), expected)
    assert features.shape == (6, tta.encoders["image"].out_dim)


def test_tta_averages_the_softmax_of_its_views() -> None:
    model = image_model(tta=["identity", "hflip", "center_crop"])
    batch = batch_of()
    with torch.no_grad():
        views = [batch["image"], batch["image"].flip(-1), TTA_VIEWS["center_crop"](batch["image"])]
        expected = torch.stack([model.predict_logits({**batch, "image": v}).softmax(-1) for v in views]).mean(0)
        probs = model.predict_step(batch, 0)["probs"]
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, model.predict_logits(batch).softmax(-1))  # the views do change the output


def test_tta_applies_each_view_to_every_image_modality() -> None:
    """Two views of a case (``dermoscopic`` and ``clinical``): a TTA view flips both images at once."""
    torch.manual_seed(0)
    views = {"dermoscopic": {"kind": "image"}, "clinical": {"kind": "image"}}
    model = MultimodalClassifier(num_classes=3, image_encoder=SMALL_IMAGE, modalities=views, tta=["identity", "hflip"])
    model.eval()
    assert model.image_modalities == ["dermoscopic", "clinical"]
    batch = batch_of(images=("dermoscopic", "clinical"))
    with torch.no_grad():
        plain = model.predict_logits(batch).softmax(-1)
        both = model.predict_logits({**batch, **{name: batch[name].flip(-1) for name in views}}).softmax(-1)
        one = model.predict_logits({**batch, "dermoscopic": batch["dermoscopic"].flip(-1)}).softmax(-1)
        probs = model.predict_step(batch, 0)["probs"]
    torch.testing.assert_close(probs, (plain + both) / 2)
    assert not torch.allclose(probs, (plain + one) / 2)  # not only the first image modality


def test_tta_leaves_text_only_models_alone() -> None:
    torch.manual_seed(0)
    model = TextClassifier(num_classes=3, text_encoder=partial(TextEncoder, "tiny"), vocab_size=32, tta=["hflip"])
    model.eval()
    batch = batch_of()
    with torch.no_grad():
        torch.testing.assert_close(model.evaluate(batch)[0], model.predict_logits(batch))


def test_temperature_divides_the_evaluation_logits_and_is_saved() -> None:
    torch.manual_seed(0)
    model = MultimodalClassifier(
        num_classes=3, image_encoder=SMALL_IMAGE, text_encoder=partial(TextEncoder, "tiny"), vocab_size=32
    ).eval()
    batch = batch_of()
    with torch.no_grad():
        raw = model(batch)
        model.temperature.fill_(2.5)
        torch.testing.assert_close(model.predict_logits(batch), raw / 2.5)
        torch.testing.assert_close(model.evaluate(batch)[0], raw / 2.5)
    assert float(model.state_dict()["temperature"]) == 2.5
