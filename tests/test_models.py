"""The LightningModules learn toy problems through the real Trainer, and wire encoders/optimizers right."""

from __future__ import annotations

import csv
import inspect
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import medfusion.models
from medfusion.data import Collate
from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import FUSIONS, ConcatFusion, GatedFusion
from medfusion.models import ImageClassifier, MultimodalClassifier, TextClassifier
from medfusion.models.multimodal import fusion_class

# tiny tensors: one intra-op thread is faster than two on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64
SMALL_IMAGE = partial(ImageEncoder, "test_resnet")
SMALL_TEXT = partial(TextEncoder, "tiny")


def toy_samples(n: int = 96, seed: int = 0) -> list[dict]:
    """An image bit (bright patch left or right) and a text bit (token 60 or 61 somewhere in noise)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        image_bit, text_bit = i % 2, (i // 2) % 2
        image = 0.3 * torch.randn(3, 32, 32, generator=g)
        image[:, 8:24, (18 if image_bit else 2) : (30 if image_bit else 14)] += 2.0
        length = int(torch.randint(6, 11, (1,), generator=g))
        ids = torch.randint(5, 50, (length,), generator=g)
        ids[0], ids[-1] = 2, 3
        ids[int(torch.randint(1, length - 1, (1,), generator=g))] = 60 + text_bit
        samples.append(
            {
                "id": f"s{i}",
                "present": {"image": True, "text": True},
                "image": image,
                "text": ids.tolist(),
                "bits": (image_bit, text_bit),
            }
        )
    return samples


def fit_and_score(model: L.LightningModule, samples: list[dict], label_of, epochs: int) -> float:
    data = [{**s, "label": label_of(*s["bits"])} for s in samples]
    loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=Collate(0))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    model.eval()
    batch = Collate(0)(data)
    with torch.no_grad():
        predicted = model(batch).argmax(-1)
    return (predicted == batch["label"]).float().mean().item()


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


def test_image_classifier_learns() -> None:
    model = ImageClassifier(num_classes=2, image_encoder=SMALL_IMAGE, lr=3e-3, scheduler="constant")
    assert fit_and_score(model, toy_samples(), lambda image_bit, text_bit: image_bit, epochs=6) > 0.95


def test_text_classifier_learns() -> None:
    model = TextClassifier(num_classes=2, text_encoder=SMALL_TEXT, vocab_size=VOCAB, lr=3e-3, scheduler="constant")
    assert fit_and_score(model, toy_samples(), lambda image_bit, text_bit: text_bit, epochs=8) > 0.95


def test_multimodal_classifier_learns_a_task_that_needs_both() -> None:
    model = MultimodalClassifier(
        num_classes=4,
        image_encoder=SMALL_IMAGE,
        text_encoder=SMALL_TEXT,
        vocab_size=VOCAB,
        lr=1e-3,
        scheduler="constant",
    )
    # each modality alone can reach 50% at most; the label is the pair of bits
    accuracy = fit_and_score(model, toy_samples(), lambda image_bit, text_bit: 2 * image_bit + text_bit, epochs=8)
    assert accuracy > 0.9


@pytest.mark.parametrize("name", FUSIONS.names())
def test_every_fusion_learns_inside_the_multimodal_classifier(name: str, small_bert: str) -> None:
    """Each registered fusion, fed by real encoders (pooled, tokens or levels), learns a label
    that needs both modalities; each modality alone leaves two classes indistinguishable."""
    model = MultimodalClassifier(
        num_classes=4,
        image_encoder=SMALL_IMAGE,
        text_encoder=partial(TextEncoder, small_bert, pooling="mean"),
        fusion=FUSIONS.get(name),
        fusion_dim=64,
        vocab_size=VOCAB,
        lr=1e-3,
        scheduler="constant",
    )
    accuracy = fit_and_score(model, toy_samples(64), lambda image_bit, text_bit: 2 * image_bit + text_bit, epochs=20)
    assert accuracy > 0.9, f"{name}: {accuracy:.2f}"


def _multimodal(**kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(
        num_classes=3, image_encoder=SMALL_IMAGE, text_encoder=SMALL_TEXT, vocab_size=VOCAB, **kwargs
    )


def test_pretrained_weights_load_once_when_a_fit_starts(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(ImageEncoder, "load_pretrained", lambda self: calls.append("image"))
    monkeypatch.setattr(TextEncoder, "load_pretrained", lambda self: calls.append("text"))
    model = _multimodal()
    assert calls == []
    model.setup("test")
    assert calls == []
    model.setup("fit")
    model.setup("fit")  # a second fit in the same process keeps the trained weights
    assert calls == ["image", "text"]
    restored = _multimodal()
    restored.on_load_checkpoint({})
    restored.setup("fit")
    assert calls == ["image", "text"]


def test_optimizer_groups_encoder_lr_and_no_decay() -> None:
    model = _multimodal(lr=1e-3, encoder_lr=1e-5, weight_decay=0.05, scheduler="constant")
    optimizer = model.configure_optimizers()
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    encoder_ids = {id(p) for e in model.encoders.values() for p in e.parameters()}
    for group in optimizer.param_groups:
        in_encoder = {id(p) in encoder_ids for p in group["params"]}
        assert len(in_encoder) == 1
        assert group["lr"] == (1e-5 if in_encoder.pop() else 1e-3)
        assert group["weight_decay"] == (0.05 if all(p.ndim > 1 for p in group["params"]) else 0.0)


def test_freeze_encoders() -> None:
    model = _multimodal(freeze_encoders=True, scheduler="constant")
    model.train()
    assert not any(p.requires_grad for e in model.encoders.values() for p in e.parameters())
    assert all(not e.training for e in model.encoders.values()) and model.head.training
    trainable = {id(p) for g in model.configure_optimizers().param_groups for p in g["params"]}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad} and trainable


def test_batch_without_the_modality_says_how_to_fix() -> None:
    model = ImageClassifier(num_classes=2, image_encoder=SMALL_IMAGE)
    with pytest.raises(KeyError, match=r"data\.modalities"):
        text = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
        model({"text": text, "label": torch.zeros(1, dtype=torch.long)})


def test_fusion_class_behind_partials() -> None:
    assert fusion_class(ConcatFusion) is ConcatFusion
    assert fusion_class(partial(GatedFusion, dropout=0.2)) is GatedFusion
    assert fusion_class(partial(partial(lambda cls, *a: cls(*a), GatedFusion))) is GatedFusion
    with pytest.raises(TypeError, match="Fusion class"):
        fusion_class(torch.nn.Linear)


def test_predict_step_gives_probabilities() -> None:
    model = _multimodal().eval()
    batch = Collate(0)([{**s, "label": 0} for s in toy_samples(4)])
    out = model.predict_step(batch, 0)
    assert out["id"] == batch["id"]
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(4))


def test_no_device_is_hard_coded() -> None:
    for module in (medfusion.models.base, medfusion.models.multimodal, medfusion.models.unimodal):
        assert "cuda" not in inspect.getsource(module)


@pytest.mark.parametrize("progress_bar", [False, True])
def test_per_step_values_are_logged_on_the_steps_the_loggers_write(tmp_path, progress_bar: bool) -> None:
    """Without a progress bar the training step logs ``train/loss`` only on the steps Lightning writes (every
    ``log_every_n_steps``) and an epoch's last: the metrics file holds exactly those rows, each the step's own loss,
    and ``callback_metrics`` the last step's, as when every step logged."""
    from lightning.pytorch.loggers import CSVLogger

    model = TextClassifier(num_classes=2, text_encoder=SMALL_TEXT, vocab_size=VOCAB, lr=3e-3, scheduler="constant")
    losses: list[float] = []
    model.on_train_batch_end = lambda outputs, batch, batch_idx: losses.append(float(outputs["loss"]))
    data = [{**s, "label": s["bits"][1]} for s in toy_samples(64)]
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="log"),
        log_every_n_steps=3,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=8, collate_fn=Collate(0)))
    rows = [r for r in csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open()) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [2, 5, 8, 11, 14]  # 16 steps, every third written (0-based)
    for row in rows:
        assert float(row["train/loss"]) == pytest.approx(losses[int(row["step"])], abs=1e-6)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses[-1], abs=1e-6)  # what monitors read


def test_a_cpu_fit_flushes_subnormal_floats_and_restores_the_default_after() -> None:
    """Subnormal floats (tiny optimizer states) are flushed to 0 while a CPU fit trains, and kept again after it."""
    subnormal = 1e-40  # below float32's smallest normal, 1.18e-38
    seen: list[float] = []
    model = TextClassifier(num_classes=2, text_encoder=SMALL_TEXT, vocab_size=VOCAB, lr=3e-3, scheduler="constant")
    model.on_train_batch_end = lambda *args: seen.append(float(torch.tensor(subnormal) * 1.0))
    fit_and_score(model, toy_samples(16), lambda image_bit, text_bit: text_bit, epochs=1)
    assert seen and all(value == 0.0 for value in seen)
    assert float(torch.tensor(subnormal) * 1.0) > 0
