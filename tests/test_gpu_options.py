"""The GPU options work (on CPU here) and change no result: channels_last, torch.compile, bf16-mixed precision."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

from medfusion.data import DemoDataModule
from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import GatedFusion
from medfusion.models import MultimodalClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only spin on a busy box


def make(**options) -> MultimodalClassifier:
    torch.manual_seed(0)
    return MultimodalClassifier(
        image_encoder=partial(ImageEncoder, "test_resnet"),
        text_encoder=partial(TextEncoder, "tiny"),
        fusion=GatedFusion,
        fusion_dim=32,
        num_classes=3,
        vocab_size=50,
        **options,
    ).eval()


def batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(4, 3, 32, 32, generator=generator),
        "text": {
            "input_ids": torch.randint(5, 50, (4, 7), generator=generator),
            "attention_mask": torch.ones(4, 7, dtype=torch.long),
        },
        "label": torch.tensor([0, 1, 2, 0]),
    }


def test_channels_last_changes_the_layout_not_the_outputs() -> None:
    plain, fast = make(), make(channels_last=True)
    fast.configure_model()
    conv = next(m for m in fast.encoders["image"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    first = fast.encoders["image"].model.conv1
    first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        assert torch.allclose(plain(batch()), fast(batch()), atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the image batch too


def test_compile_keeps_checkpoint_keys_and_outputs(monkeypatch) -> None:
    # the eager backend traces with Dynamo as on a GPU, without generating kernels (seconds, not minutes, on CPU)
    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="eager"))
    plain, compiled = make(), make(compile=True)
    compiled.configure_model()
    modules = [compiled.encoders["image"], compiled.encoders["text"], compiled.fusion, compiled.head]
    assert all(m._compiled_call_impl is not None for m in modules)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(batch()), compiled(batch()), atol=1e-5)


@pytest.mark.slow
def test_bf16_mixed_precision_trains(tmp_path) -> None:
    dm = DemoDataModule(
        root=str(tmp_path),
        num_samples=60,
        demo_image_size=32,
        image_size=32,
        batch_size=16,
        augment=False,
        numeric_columns=["age", "ldh_u_l"],
        categorical_columns=["sex", "site"],
    )
    assert dm.modalities == ["image", "text", "tabular"]  # the tabular encoder trains under bf16 too
    L.seed_everything(0)
    model = MultimodalClassifier(
        image_encoder=partial(ImageEncoder, "test_resnet"),
        text_encoder=partial(TextEncoder, "tiny"),
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        modalities=dm.modality_specs,
        channels_last=True,
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert model.head.state_dict().keys() and all(p.dtype == torch.float32 for p in model.parameters())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("fusion.") for k in changed)  # it trained
    assert any(k.startswith("encoders.tabular.") for k in changed)  # the tabular encoder as well
