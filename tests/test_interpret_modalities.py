"""Explanations of models with N named modalities: a Grad-CAM per image modality, a gate share per fusion input,
attention maps split per pair of modalities, attention on the tabular features; the W&B predictions table shows
every modality, the clinical variables with their raw values."""

from __future__ import annotations

from functools import partial

import pandas as pd
import pytest
import torch

from medfusion.callbacks.samples import prediction_table, tabular_text
from medfusion.data import Collate, DemoDataModule
from medfusion.encoders import ImageEncoder, TabularEncoder, TextEncoder
from medfusion.fusion import FUSIONS
from medfusion.interpret import attention_maps, explain_batch, explanation_figure, gradcam
from medfusion.models import MultimodalClassifier

# tiny tensors: one intra-op thread is faster than two on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64


FEATURES = ["age", "ldh", "sex", "site"]  # the tabular modality of the tests below: 2 numeric, 2 categorical


def n_modal(small_bert: str, fusion: str, specs: dict) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=3,
        modalities=specs,
        image_encoder=partial(ImageEncoder, "test_resnet"),
        text_encoder=partial(TextEncoder, small_bert),
        tabular_encoder=partial(TabularEncoder, dim=16, hidden=16, num_layers=3),
        fusion=FUSIONS.get(fusion),
        fusion_dim=32,
    )


def n_modal_batch(images: list[str], absent: dict[str, int] | None = None, n: int = 3) -> dict:
    """Images under their names, texts as in :func:`text_batch`, and tabular rows; ``absent``: name -> the one
    sample that lacks that modality."""
    absent = absent or {}
    samples = []
    for i in range(n):
        sample = {"id": f"p{i}", "label": i % 3, "text": [2, *range(10, 12 + 2 * i), 3]}
        sample |= {name: torch.randn(3, 64, 64) for name in images}
        sample["tabular"] = {
            "numeric": torch.randn(2),
            "numeric_missing": torch.tensor([False, i == 0]),
            "categorical": torch.tensor([2, 3]),
        }
        sample["present"] = {name: absent.get(name) != i for name in [*images, "text", "tabular"]}
        samples.append(sample)
    return Collate(pad_token_id=0)(samples)


TABULAR = {"kind": "tabular", "num_numeric": 2, "cardinalities": [4, 5], "features": FEATURES}
TWO_VIEWS = {"dermoscopic": {"kind": "image"}, "clinical": {"kind": "image"}, "text": {"kind": "text"}}


def test_every_image_modality_gets_its_grad_cam_and_every_input_its_gate(small_bert: str) -> None:
    torch.manual_seed(0)
    specs = {name: {**spec, "vocab_size": VOCAB} for name, spec in TWO_VIEWS.items()}
    model = n_modal(small_bert, "gated", specs)
    batch = n_modal_batch(["dermoscopic", "clinical"], absent={"clinical": 1})
    batch.pop("tabular")
    batch["present"].pop("tabular")
    explanations = explain_batch(model, batch)
    first, second = explanations[0], explanations[1]
    assert list(first.cams) == ["dermoscopic", "clinical"] and list(first.images) == ["dermoscopic", "clinical"]
    assert list(second.cams) == ["dermoscopic"]  # its clinical image is absent
    torch.testing.assert_close(first.cams["clinical"], gradcam(model, batch, modality="clinical")[0])
    # class 0, which some patches of both views of this random model raise
    clinical = gradcam(model, batch, targets=[0, 0, 0], modality="clinical")
    assert (clinical[1] == 0).all() and (clinical[[0, 2]].amax(dim=(1, 2)) > 0.99).all()  # none where absent
    dermoscopic = gradcam(model, batch, targets=[0, 0, 0], modality="dermoscopic")
    assert (dermoscopic.amax(dim=(1, 2)) > 0.99).all() and not torch.allclose(dermoscopic[0], clinical[0])
    with pytest.raises(ValueError, match="dermoscopic"):
        gradcam(model, batch, modality="text")
    # one gate segment per fusion input, in fusion order, summing to 1
    assert list(first.gate) == ["dermoscopic", "clinical", "text"]
    assert sum(first.gate.values()) == pytest.approx(1.0, abs=1e-5)
    # two images, two Grad-CAM overlays, probabilities, gate
    assert len(explanation_figure(first, ["nv", "mel", "bcc"]).axes) == 6
    assert len(explanation_figure(second, ["nv", "mel", "bcc"]).axes) == 4


@pytest.mark.parametrize("fusion", ["cross_attention", "co_attention"])
def test_attention_between_three_modalities_is_split_per_pair(small_bert: str, fusion: str) -> None:
    torch.manual_seed(0)
    specs = {"image": {"kind": "image"}, "text": {"kind": "text", "vocab_size": VOCAB}, "tabular": TABULAR}
    model = n_modal(small_bert, fusion, specs)
    batch = n_modal_batch(["image"], absent={"image": 1, "tabular": 2})
    maps = attention_maps(model, batch)
    names = list(specs)
    assert set(maps) == {f"{q}->{k}" for q in names for k in names if q != k}
    tokens = {"image": 4, "text": batch["text"]["input_ids"].shape[1], "tabular": len(FEATURES)}
    for key, weights in maps.items():
        query, _, context = key.partition("->")
        assert weights.shape == (3, tokens[query], tokens[context])
    # a query's softmax runs over all the other inputs' tokens: its pairs' rows sum to 1 together
    real = batch["text"]["attention_mask"].bool()
    text_total = maps["text->image"].sum(-1) + maps["text->tabular"].sum(-1)
    torch.testing.assert_close(text_total[real], torch.ones(int(real.sum())))
    assert (maps["text->image"].sum(-1)[real] < 0.99).all()  # the image got a share, not all of it
    tabular_total = maps["tabular->image"].sum(-1) + maps["tabular->text"].sum(-1)
    torch.testing.assert_close(tabular_total[[0, 1]], torch.ones(2, len(FEATURES)))

    first, no_image, no_tabular = explain_batch(model, batch)
    assert list(first.attention) == ["text->image"] and first.attention["text->image"].shape == (4, 2, 2)
    assert first.features == FEATURES and set(first.feature_attention) == {"text->tabular", "image->tabular"}
    text_on_features = maps["text->tabular"][0][real[0]].mean(0)
    torch.testing.assert_close(first.feature_attention["text->tabular"], text_on_features)
    assert no_image.attention == {} and no_image.cams == {} and set(no_image.feature_attention) == {"text->tabular"}
    assert no_tabular.feature_attention == {} and no_tabular.features is None
    # image, Grad-CAM, probabilities, attention on the features, then the 2 most focused tokens
    assert len(explanation_figure(first, ["nv", "mel", "bcc"], max_tokens=2).axes) == 4 + 2
    assert model.fusion.store_attention is False and not model.fusion._forward_pre_hooks


def test_predictions_table_shows_every_modality(tmp_path) -> None:
    data = DemoDataModule(
        root=str(tmp_path / "demo"),
        num_samples=60,
        demo_image_size=32,
        image_size=32,
        numeric_columns=["age", "ldh_u_l"],
        categorical_columns=["sex", "site"],
    )
    data.setup("fit")
    dataset, indices = data.datasets["val"], [0, 1, 2]
    batch = {**data.collate([dataset[i] for i in indices]), "index": indices}
    probs = torch.tensor([[0.1, 0.2, 0.1, 0.2, 0.3, 0.1]] * 3)
    columns, rows = prediction_table(data, dataset, batch, probs, data.class_names, lambda image: tuple(image.shape))
    assert columns[:6] == ["id", "image", "text", "tabular", "true", "predicted"] and len(columns) == 6 + 6
    table = pd.read_csv(tmp_path / "demo" / "metadata.csv", dtype={"sex": str, "site": str}).set_index("image_id")
    known = {column: set(values) for column, values in data.tabular.categories.items()}
    for row, index in zip(rows, indices, strict=True):
        assert row[0] == dataset.ids[index] and row[1] == (3, 32, 32) and row[2] == dataset.texts[index]
        raw = table.loc[row[0]]
        cells = dict(cell.split("=") for cell in row[3].split(", "))
        assert list(cells) == ["age", "ldh_u_l", "sex", "site"]
        for column in ("age", "ldh_u_l"):  # the raw CSV values, not the standardised inputs
            assert cells[column] == ("missing" if pd.isna(raw[column]) else f"{raw[column]:g}")
        for column in ("sex", "site"):
            expected = "missing" if pd.isna(raw[column]) else raw[column] if raw[column] in known[column] else "unknown"
            assert cells[column] == expected
        assert row[4] == data.class_names[dataset.labels[index]] and row[5] == data.class_names[4]
    without = tabular_text(None, dataset.tabular, 0)
    assert without.startswith("numeric_0=") and "categorical_1=" in without

    two_views = DemoDataModule(root=str(tmp_path / "views"), num_samples=40, demo_image_size=32, image_size=32, views=2)
    two_views.setup("fit")
    dataset = two_views.datasets["val"]
    batch = {**two_views.collate([dataset[0]]), "index": [0]}
    columns, rows = prediction_table(two_views, dataset, batch, probs[:1], two_views.class_names, lambda i: "img")
    assert columns[:5] == ["id", "dermoscopic", "clinical", "text", "true"] and rows[0][1:3] == ["img", "img"]
