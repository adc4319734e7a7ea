"""Missing modalities, the model side: absent inputs are never encoded and are replaced by learned stand-ins that
get gradients, for every fusion kind and with a tabular third; auxiliary heads and CLIP use only the samples with
their modalities; single-modality models refuse absent inputs; modality dropout."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from missing_helpers import SMALL_TABULAR, spy
from test_models import SMALL_IMAGE, SMALL_TEXT, VOCAB, fit_and_score, toy_samples

from medfusion.data import Collate, ConfigError
from medfusion.fusion import ConcatFusion, CrossAttentionFusion, HierarchicalFusion
from medfusion.models import ImageClassifier, MultimodalClassifier, TabularClassifier, TextClassifier
from medfusion.models.missing import drop_modalities

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only spin on a busy box


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


# ----------------------------------------------------------------------------------------- model
TABULAR_SPEC = {"kind": "tabular", "num_numeric": 2, "cardinalities": [4, 3]}
THREE = {"image": {"kind": "image"}, "text": {"kind": "text", "vocab_size": VOCAB}, "tabular": TABULAR_SPEC}


def multimodal(fusion=ConcatFusion, **kwargs) -> MultimodalClassifier:
    """An image+text model, or (``modalities=THREE``) image+text+tabular."""
    return MultimodalClassifier(
        num_classes=4,
        image_encoder=SMALL_IMAGE,
        text_encoder=SMALL_TEXT,
        tabular_encoder=SMALL_TABULAR,
        vocab_size=VOCAB,
        fusion=fusion,
        **kwargs,
    )


def toy_batch(image_present: list[bool], text_present: list[bool], tabular_present: list[bool] | None = None) -> dict:
    """Toy samples with the given modalities present; a tabular modality only when ``tabular_present`` is given."""
    samples = [{**s, "label": i % 4} for i, s in enumerate(toy_samples(len(image_present)))]
    g = torch.Generator().manual_seed(0)
    for i, sample in enumerate(samples):
        present = {"image": image_present[i], "text": text_present[i]}
        sample["image"] = sample["image"] if present["image"] else None
        sample["text"] = sample["text"] if present["text"] else None
        if tabular_present is not None:
            present["tabular"] = tabular_present[i]
            sample["tabular"] = {
                "numeric": torch.randn(2, generator=g),
                "numeric_missing": torch.tensor([False, i % 3 == 0]),
                "categorical": torch.tensor([2 + i % 2, 2]),
            }
        sample["present"] = present
    return Collate(0, missing_text_ids=(2, 3), image_shape=(3, 32, 32))(samples)


FUSIONS = [ConcatFusion, partial(CrossAttentionFusion, num_heads=4), HierarchicalFusion]
IMAGE = [True, False, True, True, False, True]
TEXT = [True, True, False, True, True, False]
TABLE = [False, True, True, True, False, True]


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
def test_encoders_see_only_the_present_rows(fusion) -> None:
    model = multimodal(fusion).eval()
    batch = toy_batch(IMAGE, TEXT)
    images, texts = spy(model.encoders["image"]), spy(model.encoders["text"])
    with torch.no_grad():
        encoded = model.encode(batch)
        logits = model(batch)
    assert list(encoded) == ["image", "text"]
    image, text = encoded["image"], encoded["text"]
    assert torch.equal(images[0], batch["image"][torch.tensor(IMAGE)])
    assert torch.equal(texts[0], batch["text"]["input_ids"][torch.tensor(TEXT)])
    assert logits.shape == (6, 4) and logits.isfinite().all()
    # Present rows are what the encoder gives on its own; absent rows are the learned stand-ins.
    kind = model.fusion.input_kind
    wants = {"tokens": kind == "tokens", "levels": kind == "levels"}
    with torch.no_grad():
        alone = model.encoders["image"](batch["image"][torch.tensor(IMAGE)], **wants)
    torch.testing.assert_close(image.pooled[torch.tensor(IMAGE)], alone.pooled)
    absent_image, absent_text = ~torch.tensor(IMAGE), ~torch.tensor(TEXT)
    if kind == "pooled":
        assert torch.equal(image.pooled[absent_image], model.missing["image"].pooled.expand(2, -1))
        assert torch.equal(text.pooled[absent_text], model.missing["text"].pooled.expand(2, -1))
    if kind == "tokens":
        assert text.mask[absent_text].tolist() == [[True] + [False] * (text.mask.shape[1] - 1)] * 2
        assert torch.equal(text.tokens[absent_text][:, 0], model.missing["text"].token.expand(2, -1))
        assert text.tokens[absent_text][:, 1:].eq(0).all()
        assert image.mask[~absent_image].all() and image.mask[absent_image].sum().item() == 2
        torch.testing.assert_close(image.tokens[torch.tensor(IMAGE)], alone.tokens)
    if kind == "levels":
        for level, stand_in in zip(image.levels, model.missing["image"].levels, strict=True):
            assert torch.equal(level[absent_image], stand_in.expand(2, -1))


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
def test_an_absent_tabular_input_is_its_learned_stand_in(fusion) -> None:
    model = multimodal(fusion, modalities=THREE).eval()
    batch = toy_batch(IMAGE, TEXT, TABLE)
    rows = spy(model.encoders["tabular"])
    with torch.no_grad():
        encoded = model.encode(batch)
        logits = model(batch)
    assert list(encoded) == ["image", "text", "tabular"] and list(model.missing) == list(encoded)
    has = torch.tensor(TABLE)
    assert torch.equal(rows[0], batch["tabular"]["numeric"][has])  # only the rows that have it, once per call
    assert len(rows) == 2 and logits.shape == (6, 4) and logits.isfinite().all()
    tabular, stand_in = encoded["tabular"], model.missing["tabular"]
    with torch.no_grad():
        alone = model.encoders["tabular"](**{k: v[has] for k, v in batch["tabular"].items()}, **model.feature_fields())
    torch.testing.assert_close(tabular.pooled[has], alone.pooled)
    kind = model.fusion.input_kind
    if kind == "pooled":
        assert torch.equal(tabular.pooled[~has], stand_in.pooled.expand(2, -1))
    if kind == "tokens":
        assert tabular.mask[~has].sum(1).tolist() == [1, 1] and tabular.mask[~has][:, 0].all()
        assert torch.equal(tabular.tokens[~has][:, 0], stand_in.token.expand(2, -1))
        torch.testing.assert_close(tabular.tokens[has], alone.tokens)
    if kind == "levels":
        assert len(tabular.levels) == 3
        for level, p in zip(tabular.levels, stand_in.levels, strict=True):
            assert torch.equal(level[~has], p.expand(2, -1))
    # What the fusion sees for an absent row does not depend on the tabular values it was not to use.
    changed = {**batch, "tabular": {**batch["tabular"], "numeric": batch["tabular"]["numeric"] + 5.0}}
    with torch.no_grad():
        again = model(changed)
    torch.testing.assert_close(again[~has], logits[~has])
    assert not torch.allclose(again[has], logits[has])


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
@pytest.mark.parametrize("three", [False, True], ids=["image+text", "image+text+tabular"])
def test_the_learned_stand_ins_get_gradients(fusion, three: bool) -> None:
    model = multimodal(fusion, **({"modalities": THREE} if three else {})).train()
    batch = toy_batch(IMAGE, TEXT, TABLE if three else None)
    _, loss, _ = model.training_objective(batch)
    loss.backward()
    assert list(model.missing) == ["image", "text", *(["tabular"] if three else [])]
    stand_ins = [p for m in model.missing.values() for p in m.parameters()]
    # Only the forms the fusion consumes: a pooled vector, a token, or one vector per level (3 levels each).
    per_modality = {"pooled": 1, "tokens": 1, "levels": 3}[model.fusion.input_kind]
    assert len(stand_ins) == per_modality * len(model.missing)
    for name, m in model.missing.items():
        for field, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, field)
    # Every sample present: the stand-ins are in the graph (DDP) but get no gradient.
    model.zero_grad()
    everything = [True] * 6
    model.training_objective(toy_batch(everything, everything, everything if three else None))[1].backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in stand_ins)


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
def test_a_modality_absent_from_the_whole_batch_is_never_encoded(fusion) -> None:
    cases = [(["image", "text"], "image"), (["image", "text"], "text"), (["image", "text", "tabular"], "tabular")]
    for names, idle in cases:
        model = multimodal(fusion, **({"modalities": THREE} if "tabular" in names else {})).train()
        calls = {name: spy(model.encoders[name]) for name in names}
        flags = {name: [name != idle] * 5 for name in names}
        _, loss, _ = model.training_objective(toy_batch(flags["image"], flags["text"], flags.get("tabular")))
        assert loss.isfinite()
        loss.backward()
        assert {name: len(c) for name, c in calls.items()} == {name: int(name != idle) for name in names}, idle
        assert all(p.grad.abs().sum() > 0 for p in model.missing[idle].parameters()), idle


def test_aux_heads_and_clip_use_only_samples_with_their_modalities() -> None:
    model = multimodal(aux_heads=True, clip_weight=0.5).eval()
    batch = toy_batch(IMAGE, TEXT)
    _, loss, terms = model.training_objective(batch)
    encoded = model.encode(batch)
    target, has_image, has_text = batch["label"], torch.tensor(IMAGE), torch.tensor(TEXT)
    ce = torch.nn.functional.cross_entropy
    heads = model.unimodal_heads
    torch.testing.assert_close(
        terms["loss_image"], ce(heads["image"](encoded["image"].pooled)[has_image], target[has_image])
    )
    torch.testing.assert_close(
        terms["loss_text"], ce(heads["text"](encoded["text"].pooled)[has_text], target[has_text])
    )
    assert loss.isfinite()
    # No sample with both: the CLIP term is zero (and finite), not NaN.
    _, loss, terms = model.training_objective(toy_batch([True, False, True], [False, True, False]))
    assert terms["clip"].item() == 0.0 and loss.isfinite()
    # Both compare exactly two modalities.
    for option in ({"aux_heads": True}, {"clip_weight": 0.5}):
        with pytest.raises(ConfigError, match="compare two modalities"):
            multimodal(modalities=THREE, **option)


def test_single_modality_models_refuse_absent_inputs() -> None:
    batch = toy_batch([True, False, True], [True, True, False], [False, True, True])
    with pytest.raises(ValueError, match=r"ImageClassifier got samples without their 'image' input \(ids \['s1'\]"):
        ImageClassifier(num_classes=4, image_encoder=SMALL_IMAGE)(batch)
    with pytest.raises(
        ValueError, match=r"TextClassifier got samples without their 'text' input.*MultimodalClassifier"
    ):
        TextClassifier(num_classes=4, text_encoder=SMALL_TEXT, vocab_size=VOCAB)(batch)
    tabular_model = TabularClassifier(
        num_classes=4, tabular_encoder=SMALL_TABULAR, modalities={"tabular": TABULAR_SPEC}
    ).eval()
    with pytest.raises(ValueError, match=r"TabularClassifier got samples without their 'tabular' input \(ids \['s0'\]"):
        tabular_model(batch)
    # Only its own modality matters: absent images and texts are no concern of a tabular model.
    assert tabular_model(toy_batch([False] * 3, [False] * 3, [True] * 3)).shape == (3, 4)


# ------------------------------------------------------------------------------- modality dropout
def test_drop_modalities_drops_one_modality_never_both() -> None:
    torch.manual_seed(0)
    n = 20000
    image = torch.rand(n) < 0.9
    text = (torch.rand(n) < 0.9) | ~image  # every sample has at least one
    both = image & text
    given = {"image": image.clone(), "text": text.clone()}
    new = drop_modalities(given, 0.4)
    assert list(new) == ["image", "text"]
    assert torch.equal(given["image"], image) and torch.equal(given["text"], text)  # the input is not modified
    new_image, new_text = new["image"], new["text"]
    assert (new_image | new_text).all()  # never both
    assert ((new_image <= image) & (new_text <= text)).all()  # nothing comes back
    assert torch.equal(new_image[~both], image[~both]) and torch.equal(new_text[~both], text[~both])
    lost_image = (image & ~new_image).sum() / both.sum()
    lost_text = (text & ~new_text).sum() / both.sum()
    assert abs(lost_image - 0.2) < 0.02 and abs(lost_text - 0.2) < 0.02  # p = 0.4, split evenly
    kept = drop_modalities({"image": image, "text": text}, 0.0)
    assert torch.equal(kept["image"], image) and torch.equal(kept["text"], text)
    one = drop_modalities({"image": image, "text": text}, 1.0)
    assert (one["image"] ^ one["text"])[both].all()  # p = 1: every sample with both keeps exactly one


def test_drop_modalities_of_three_drops_exactly_one_present_modality_uniformly() -> None:
    torch.manual_seed(0)
    n, p = 30000, 0.6
    names = ["image", "text", "tabular"]
    present = {name: torch.rand(n) < 0.7 for name in names}
    present["tabular"] |= ~(present["image"] | present["text"])  # every sample has at least one
    flags = torch.stack([present[name] for name in names], 1)
    count = flags.sum(1)
    assert all(int((count == k).sum()) > 5000 for k in (1, 2, 3))
    new = drop_modalities(present, p)
    assert list(new) == names
    after = torch.stack([new[name] for name in names], 1)
    lost = flags & ~after
    assert not (after & ~flags).any()  # nothing comes back
    assert after.any(1).all()  # never all
    assert lost.sum(1).le(1).all()  # at most one per sample
    assert torch.equal(after[count == 1], flags[count == 1])  # a sample with a single modality keeps it
    for k in (2, 3):
        rows = count == k
        assert abs(lost[rows].any(1).float().mean() - p) < 0.02, k  # with probability p ...
        for j, name in enumerate(names):  # ... one of the k present ones, each as likely as the others
            rate = lost[rows & flags[:, j], j].float().mean()
            assert abs(rate - p / k) < 0.02, (name, k, rate)
    everything = torch.stack(list(drop_modalities(present, 1.0).values()), 1)
    assert torch.equal(everything.sum(1)[count >= 2], count[count >= 2] - 1)  # p = 1: each loses exactly one


def test_modality_dropout_only_in_training() -> None:
    with pytest.raises(ValueError, match="modality_dropout"):
        multimodal(modality_dropout=1.5)
    model = multimodal(modality_dropout=1.0)
    batch = toy_batch([True] * 8, [True] * 8)
    images, texts = spy(model.encoders["image"]), spy(model.encoders["text"])
    model.train().training_objective(batch)
    assert len(images[0]) + len(texts[0]) == 8  # each sample kept exactly one modality
    model.eval().training_objective(batch)
    model(batch)
    assert [len(x) for x in images[1:]] == [8, 8] and [len(x) for x in texts[1:]] == [8, 8]
    assert batch["present"]["image"].all() and batch["present"]["text"].all()  # the caller's batch is untouched
    # Three modalities: each sample loses exactly one of its three.
    model = multimodal(modality_dropout=1.0, modalities=THREE).train()
    batch3 = toy_batch([True] * 8, [True] * 8, [True] * 8)
    calls = {name: spy(model.encoders[name]) for name in model.encoders}
    model.training_objective(batch3)
    assert sum(len(x) for c in calls.values() for x in c) == 16
    assert all(flag.all() for flag in batch3["present"].values())
    # On complete data only the dropout trains the stand-ins.
    for p, trained in ((1.0, True), (0.0, False)):
        model = multimodal(modality_dropout=p).train()
        model.training_objective(batch)[1].backward()
        grads = [q.grad.abs().sum().item() for m in model.missing.values() for q in m.parameters()]
        assert all((g > 0) == trained for g in grads), (p, grads)


def predict_without(model: MultimodalClassifier, modality: str | None) -> tuple[torch.Tensor, list[tuple]]:
    """Predicted classes of unseen toy samples with ``modality`` (if any) absent from all, and their bits."""
    samples = toy_samples(96, seed=1)
    batch = Collate(0, missing_text_ids=(2, 3), image_shape=(3, 32, 32))([{**s, "label": 0} for s in samples])
    if modality:
        batch["present"][modality] = torch.zeros(len(samples), dtype=torch.bool)
    with torch.no_grad():
        return model.eval()(batch).argmax(-1), [s["bits"] for s in samples]


def test_modality_dropout_keeps_a_model_useful_without_its_text() -> None:
    """The toy label needs both bits (4 classes, chance 25%): without the text the best is 50% (the image bit).
    Trained with modality dropout, the model still reads the image bit on unseen samples when the text is
    removed (and the text bit when the image is), and its stand-ins were trained."""

    def label_of(image_bit: int, text_bit: int) -> int:
        return 2 * image_bit + text_bit

    model = multimodal(lr=1e-3, scheduler="constant", modality_dropout=0.5)
    initial = [p.detach().clone() for p in model.missing["text"].parameters()]
    assert fit_and_score(model, toy_samples(), label_of, epochs=12) > 0.85
    assert not any(torch.equal(a, b) for a, b in zip(initial, model.missing["text"].parameters(), strict=True))
    for modality, threshold in ((None, 0.85), ("text", 0.4), ("image", 0.4)):
        predicted, bits = predict_without(model, modality)
        labels = torch.tensor([label_of(*b) for b in bits])
        assert (predicted == labels).float().mean() > threshold, modality
        if modality == "text":  # the image bit is read: the prediction is one of the two classes it allows
            assert (predicted // 2 == torch.tensor([b[0] for b in bits])).float().mean() > 0.9
