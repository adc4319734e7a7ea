"""Missing modalities: allowed only when asked for, marked in the batch, never encoded, replaced by learned
stand-ins; modality dropout; the no_text / no_image robustness test sets."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from test_data import build, data_error, ham_datamodule, sample_rows, write_layout
from test_models import SMALL_IMAGE, SMALL_TEXT, VOCAB, fit_and_score, toy_samples

from medfusion.data import Collate
from medfusion.data import TestSet as ExternalTestSet
from medfusion.fusion import ConcatFusion, CrossAttentionFusion, HierarchicalFusion
from medfusion.models import ImageClassifier, MultimodalClassifier, TextClassifier
from medfusion.models.missing import drop_modalities

NO_IMAGE = {"s002", "s007", "s013"}  # empty image cells
NO_TEXT = {"s004", "s009"}  # no JSON entry
EMPTY_TEXT = {"s011"}  # an empty JSON text


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


def gappy_layout(root: Path):
    """24 samples with an image column; some cells empty, some ids without (or with an empty) text."""
    rows = [r | {"file": "" if r["image_id"] in NO_IMAGE else f"{r['image_id']}.png"} for r in sample_rows()]
    layout = write_layout(root, rows)
    texts = json.loads(layout.json_path.read_text())
    for image_id in NO_TEXT:
        del texts[image_id]
    texts |= dict.fromkeys(EMPTY_TEXT, "  ")
    layout.json_path.write_text(json.dumps(texts))
    return layout


# ------------------------------------------------------------------------------------------ data
def test_missing_inputs_are_errors_unless_allowed(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    message = data_error(
        lambda: build(layout, image_column="file"), "Empty image path values", "samples.csv", "line 4", "allow_missing"
    )
    assert "line 9" in message and "line 15" in message  # s007, s013
    # Images allowed, texts not: the JSON's missing ids are named, then the empty text.
    data_error(
        lambda: build(layout, image_column="file", allow_missing=["image"]),
        "no text in",
        "samples.json",
        "line 6",
        "'s004'",
        "line 11",
        "allow_missing: [text]",
    )
    texts = json.loads(layout.json_path.read_text())
    layout.json_path.write_text(json.dumps(texts | dict.fromkeys(NO_TEXT, "a text")))
    data_error(lambda: build(layout, image_column="file", allow_missing=["image"]), "Empty texts", "line 13", "'s011'")


def test_a_path_to_no_file_stays_an_error_when_images_may_be_missing(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    (layout.image_dir / "s005.png").unlink()
    data_error(
        lambda: build(layout, image_column="file", allow_missing=["image", "text"]),
        "Missing image files",
        "line 7",
        "'s005.png'",
    )


def test_a_sample_with_neither_modality_is_an_error(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text())
    del texts["s002"]  # s002 has no image either
    layout.json_path.write_text(json.dumps(texts))
    data_error(
        lambda: build(layout, image_column="file", allow_missing=["image", "text"]),
        "neither an image nor a text",
        "line 4",
        "'s002'",
    )


def test_allow_missing_options_are_checked(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    data_error(lambda: build(layout, allow_missing=["image"]), "image_column", "allow_missing")
    with pytest.raises(ValueError, match="subset of modalities"):
        build(layout, modalities=["image"], text_json=None, allow_missing=["text"])


def test_allowed_missing_inputs_are_marked_in_every_batch(tmp_path: Path) -> None:
    layout = gappy_layout(tmp_path)
    dm = build(layout, image_column="file", allow_missing=["image", "text"], mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup()
    empty_text = dm.tokenizer("")["input_ids"]
    assert empty_text == [dm.tokenizer.cls_token_id, dm.tokenizer.sep_token_id]
    seen = set()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            for row, sample_id in enumerate(batch["id"]):
                seen.add(sample_id)
                has_image, has_text = sample_id not in NO_IMAGE, sample_id not in NO_TEXT | EMPTY_TEXT
                assert batch["image_present"][row].item() == has_image
                assert batch["text_present"][row].item() == has_text
                assert (batch["image"][row].abs().sum() > 0) == has_image  # absent: a zeros placeholder
                if not has_text:
                    length = int(batch["attention_mask"][row].sum())
                    assert batch["input_ids"][row, :length].tolist() == empty_text
    assert seen == {r["image_id"] for r in layout.rows}
    report = dm.data_report
    assert sum(report[f"missing_images/{s}"] for s in ("train", "val", "test")) == len(NO_IMAGE)
    assert sum(report[f"missing_texts/{s}"] for s in ("train", "val", "test")) == len(NO_TEXT | EMPTY_TEXT)


def test_missing_text_cells_of_a_text_column(tmp_path: Path) -> None:
    rows = [r | {"report": "" if r["image_id"] in NO_TEXT else f"report of {r['image_id']}"} for r in sample_rows()]
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout, text_json=None, text_column="report"), "Empty texts", "line 6", "allow_missing")
    dm = build(layout, text_json=None, text_column="report", allow_missing=["text"])
    records = [dm._records[s] for s in ("train", "val", "test")]
    assert {i for r in records for i, t in zip(r.ids, r.texts, strict=True) if t is None} == NO_TEXT


def test_template_texts_are_never_missing(ham_metadata_csv) -> None:
    """HAM10000's templated texts: a missing age is a missing field ("unknown"), not a missing text."""
    dm = ham_datamodule(ham_metadata_csv, modalities=["text"], allow_missing=["text"], seed=0)
    dm.setup("fit")
    assert dm.data_report["missing_texts/train"] == dm.data_report["missing_texts/val"] == 0
    assert all(t is not None for t in dm._records["train"].texts)


def test_collate_marks_absent_samples_and_builds_placeholders() -> None:
    samples = [
        {"id": "a", "label": 0, "image": torch.ones(3, 4, 4), "input_ids": [2, 10, 11, 3]},
        {"id": "b", "label": 1, "image": None, "input_ids": [2, 12, 3]},
        {"id": "c", "label": 0, "image": torch.ones(3, 4, 4), "input_ids": None},
    ]
    batch = Collate(pad_token_id=0, missing_text_ids=(2, 3))(samples)
    assert batch["image_present"].tolist() == [True, False, True]
    assert batch["text_present"].tolist() == [True, True, False]
    assert batch["image_present"].dtype == batch["text_present"].dtype == torch.bool
    assert batch["image"].shape == (3, 3, 4, 4) and batch["image"][1].eq(0).all() and batch["image"][0].eq(1).all()
    assert batch["input_ids"].tolist() == [[2, 10, 11, 3], [2, 12, 3, 0], [2, 3, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    # No image in the whole batch: the placeholder needs its shape.
    no_images = [{**s, "image": None} for s in samples]
    assert Collate(image_shape=(3, 5, 5))(no_images)["image"].shape == (3, 3, 5, 5)
    with pytest.raises(ValueError, match="image_shape"):
        Collate()(no_images)


# ----------------------------------------------------------------------------------------- model
def multimodal(fusion=ConcatFusion, **kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=4, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT, vocab_size=VOCAB, fusion=fusion, **kwargs
    )


def toy_batch(image_present: list[bool], text_present: list[bool]) -> dict:
    samples = [{**s, "label": i % 4} for i, s in enumerate(toy_samples(len(image_present)))]
    for sample, has_image, has_text in zip(samples, image_present, text_present, strict=True):
        sample["image"] = sample["image"] if has_image else None
        sample["input_ids"] = sample["input_ids"] if has_text else None
    return Collate(0, missing_text_ids=(2, 3), image_shape=(3, 32, 32))(samples)


def spy(module: torch.nn.Module) -> list[torch.Tensor]:
    """The first positional input of every call of ``module``."""
    calls: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _, args: calls.append(args[0].detach().clone()))
    return calls


FUSIONS = [ConcatFusion, partial(CrossAttentionFusion, num_heads=4), HierarchicalFusion]
IMAGE = [True, False, True, True, False, True]
TEXT = [True, True, False, True, True, False]


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
def test_encoders_see_only_the_present_rows(fusion) -> None:
    model = multimodal(fusion).eval()
    batch = toy_batch(IMAGE, TEXT)
    images, texts = spy(model.image_encoder), spy(model.text_encoder)
    with torch.no_grad():
        image, text = model.encode(batch)
        logits = model(batch)
    assert torch.equal(images[0], batch["image"][torch.tensor(IMAGE)])
    assert torch.equal(texts[0], batch["input_ids"][torch.tensor(TEXT)])
    assert logits.shape == (6, 4) and logits.isfinite().all()
    # Present rows are what the encoder gives on its own; absent rows are the learned stand-ins.
    kind = model.fusion.input_kind
    wants = {"tokens": kind == "tokens", "levels": kind == "levels"}
    with torch.no_grad():
        alone = model.image_encoder(batch["image"][torch.tensor(IMAGE)], **wants)
    torch.testing.assert_close(image.pooled[torch.tensor(IMAGE)], alone.pooled)
    absent_image, absent_text = ~torch.tensor(IMAGE), ~torch.tensor(TEXT)
    if kind == "pooled":
        assert torch.equal(image.pooled[absent_image], model.missing_image.pooled.expand(2, -1))
        assert torch.equal(text.pooled[absent_text], model.missing_text.pooled.expand(2, -1))
    if kind == "tokens":
        assert text.mask[absent_text].tolist() == [[True] + [False] * (text.mask.shape[1] - 1)] * 2
        assert torch.equal(text.tokens[absent_text][:, 0], model.missing_text.token.expand(2, -1))
        assert text.tokens[absent_text][:, 1:].eq(0).all()
        assert image.mask[~absent_image].all() and image.mask[absent_image].sum().item() == 2
        torch.testing.assert_close(image.tokens[torch.tensor(IMAGE)], alone.tokens)
    if kind == "levels":
        for level, stand_in in zip(image.levels, model.missing_image.levels, strict=True):
            assert torch.equal(level[absent_image], stand_in.expand(2, -1))


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
def test_the_learned_stand_ins_get_gradients(fusion) -> None:
    model = multimodal(fusion).train()
    batch = toy_batch(IMAGE, TEXT)
    _, loss, _ = model.training_objective(batch)
    loss.backward()
    stand_ins = [p for m in (model.missing_image, model.missing_text) for p in m.parameters()]
    # Only the forms the fusion consumes: a pooled vector, a token, or one vector per level (3 levels each).
    assert len(stand_ins) == {"pooled": 2, "tokens": 2, "levels": 6}[model.fusion.input_kind]
    for name, p in [*model.missing_image.named_parameters(), *model.missing_text.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Every sample present: the stand-ins are in the graph (DDP) but get no gradient.
    model.zero_grad()
    model.training_objective(toy_batch([True] * 6, [True] * 6))[1].backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in stand_ins)


@pytest.mark.parametrize("fusion", FUSIONS, ids=["pooled", "tokens", "levels"])
def test_a_modality_absent_from_the_whole_batch_is_never_encoded(fusion) -> None:
    for image_present, text_present, idle in (([False] * 5, [True] * 5, "image"), ([True] * 5, [False] * 5, "text")):
        model = multimodal(fusion).train()
        calls = {"image": spy(model.image_encoder), "text": spy(model.text_encoder)}
        _, loss, _ = model.training_objective(toy_batch(image_present, text_present))
        assert loss.isfinite()
        loss.backward()
        assert calls[idle] == [] and len(calls["text" if idle == "image" else "image"]) == 1
        stand_in = model.missing_image if idle == "image" else model.missing_text
        assert all(p.grad.abs().sum() > 0 for p in stand_in.parameters())


def test_aux_heads_and_clip_use_only_samples_with_their_modalities() -> None:
    model = multimodal(aux_heads=True, clip_weight=0.5).eval()
    batch = toy_batch(IMAGE, TEXT)
    _, loss, terms = model.training_objective(batch)
    image, text = model.encode(batch)
    target, has_image, has_text = batch["label"], torch.tensor(IMAGE), torch.tensor(TEXT)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(terms["loss_image"], ce(model.image_head(image.pooled)[has_image], target[has_image]))
    torch.testing.assert_close(terms["loss_text"], ce(model.text_head(text.pooled)[has_text], target[has_text]))
    assert loss.isfinite()
    # No sample with both: the CLIP term is zero (and finite), not NaN.
    _, loss, terms = model.training_objective(toy_batch([True, False, True], [False, True, False]))
    assert terms["clip"].item() == 0.0 and loss.isfinite()


def test_single_modality_models_refuse_absent_inputs() -> None:
    batch = toy_batch([True, False, True], [True, True, False])
    with pytest.raises(ValueError, match=r"ImageClassifier got samples without an image \(ids \['s1'\]"):
        ImageClassifier(num_classes=4, image_encoder=SMALL_IMAGE)(batch)
    with pytest.raises(ValueError, match=r"TextClassifier got samples without a text.*MultimodalClassifier"):
        TextClassifier(num_classes=4, text_encoder=SMALL_TEXT, vocab_size=VOCAB)(batch)


# ------------------------------------------------------------------------------- modality dropout
def test_drop_modalities_drops_one_modality_never_both() -> None:
    torch.manual_seed(0)
    n = 20000
    image = torch.rand(n) < 0.9
    text = (torch.rand(n) < 0.9) | ~image  # every sample has at least one
    both = image & text
    new_image, new_text = drop_modalities(image, text, 0.4)
    assert (new_image | new_text).all()  # never both
    assert ((new_image <= image) & (new_text <= text)).all()  # nothing comes back
    assert torch.equal(new_image[~both], image[~both]) and torch.equal(new_text[~both], text[~both])
    lost_image = (image & ~new_image).sum() / both.sum()
    lost_text = (text & ~new_text).sum() / both.sum()
    assert abs(lost_image - 0.2) < 0.02 and abs(lost_text - 0.2) < 0.02  # p = 0.4, split evenly
    kept_image, kept_text = drop_modalities(image, text, 0.0)
    assert torch.equal(kept_image, image) and torch.equal(kept_text, text)
    one_image, one_text = drop_modalities(image, text, 1.0)
    assert (one_image ^ one_text)[both].all()  # p = 1: every sample with both keeps exactly one


def test_modality_dropout_only_in_training() -> None:
    with pytest.raises(ValueError, match="modality_dropout"):
        multimodal(modality_dropout=1.5)
    model = multimodal(modality_dropout=1.0)
    batch = toy_batch([True] * 8, [True] * 8)
    images, texts = spy(model.image_encoder), spy(model.text_encoder)
    model.train().training_objective(batch)
    assert len(images[0]) + len(texts[0]) == 8  # each sample kept exactly one modality
    model.eval().training_objective(batch)
    model(batch)
    assert [len(x) for x in images[1:]] == [8, 8] and [len(x) for x in texts[1:]] == [8, 8]
    assert batch["image_present"].all() and batch["text_present"].all()  # the caller's batch is untouched
    # On complete data only the dropout trains the stand-ins.
    for p, trained in ((1.0, True), (0.0, False)):
        model = multimodal(modality_dropout=p).train()
        model.training_objective(batch)[1].backward()
        grads = [q.grad.abs().sum().item() for m in (model.missing_image, model.missing_text) for q in m.parameters()]
        assert all((g > 0) == trained for g in grads), (p, grads)


def predict_without(model: MultimodalClassifier, modality: str | None) -> tuple[torch.Tensor, list[tuple]]:
    """Predicted classes of unseen toy samples with ``modality`` (if any) absent from all, and their bits."""
    samples = toy_samples(96, seed=1)
    batch = Collate(0, missing_text_ids=(2, 3), image_shape=(3, 32, 32))([{**s, "label": 0} for s in samples])
    if modality:
        batch[f"{modality}_present"] = torch.zeros(len(samples), dtype=torch.bool)
    with torch.no_grad():
        return model.eval()(batch).argmax(-1), [s["bits"] for s in samples]


def test_modality_dropout_keeps_a_model_useful_without_its_text() -> None:
    """The toy label needs both bits (4 classes, chance 25%): without the text the best is 50% (the image bit).
    Trained with modality dropout, the model still reads the image bit on unseen samples when the text is
    removed (and the text bit when the image is), and its stand-ins were trained."""

    def label_of(image_bit: int, text_bit: int) -> int:
        return 2 * image_bit + text_bit

    model = multimodal(lr=1e-3, scheduler="constant", modality_dropout=0.5)
    initial = [p.detach().clone() for p in model.missing_text.parameters()]
    assert fit_and_score(model, toy_samples(), label_of, epochs=12) > 0.85
    assert not any(torch.equal(a, b) for a, b in zip(initial, model.missing_text.parameters(), strict=True))
    for modality, threshold in ((None, 0.85), ("text", 0.4), ("image", 0.4)):
        predicted, bits = predict_without(model, modality)
        labels = torch.tensor([label_of(*b) for b in bits])
        assert (predicted == labels).float().mean() > threshold, modality
        if modality == "text":  # the image bit is read: the prediction is one of the two classes it allows
            assert (predicted // 2 == torch.tensor([b[0] for b in bits])).float().mean() > 0.9


# ------------------------------------------------------------------------------ robustness sets
def test_robustness_test_sets_next_to_the_external_ones(tmp_path: Path) -> None:
    main = write_layout(tmp_path / "main")
    ext_rows = [{"image_id": f"x{i}", "label": ["benign", "malignant"][i % 2], "site": "back"} for i in range(5)]
    ext = write_layout(tmp_path / "ext", ext_rows, name="external")
    spec = ExternalTestSet(csv_path=str(ext.csv_path), image_dir=str(ext.image_dir), text_json=str(ext.json_path))
    dm = build(main, test_sets={"ext": spec}, robustness=True)
    assert dm.test_set_names == ["test", "ext", "no_text", "no_image"]
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 4
    ids = [[i for batch in loader for i in batch["id"]] for loader in loaders]
    assert ids[2] == ids[3] == ids[0] and len(ids[0]) == len(dm._records["test"].ids) > 0 and len(ids[1]) == 5
    for loader, image, text in zip(loaders, (True, True, True, False), (True, True, False, True), strict=True):
        for batch in loader:
            assert batch["image_present"].eq(image).all() and batch["text_present"].eq(text).all()
    model = MultimodalClassifier(
        num_classes=2, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT, vocab_size=dm.vocab_size
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, datamodule=dm, verbose=False)
    for prefix in ("test/", "test_ext/", "test_no_text/", "test_no_image/"):
        assert f"{prefix}acc" in trainer.callback_metrics and f"{prefix}loss" in trainer.callback_metrics


def test_robustness_needs_both_modalities_and_free_names(tmp_path: Path) -> None:
    main = write_layout(tmp_path / "main")
    with pytest.raises(ValueError, match="robustness"):
        build(main, modalities=["image"], text_json=None, robustness=True)
    spec = ExternalTestSet(csv_path=str(main.csv_path))
    with pytest.raises(ValueError, match="no_text"):
        build(main, test_sets={"no_text": spec}, robustness=True)
