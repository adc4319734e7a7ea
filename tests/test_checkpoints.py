"""A model built in Python (classes and partials as factories) writes checkpoints that load with
``weights_only=True``, as the CLI's do."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from medfusion.encoders import ImageEncoder, TextEncoder
from medfusion.fusion import GatedFusion
from medfusion.heads import MLPHead
from medfusion.models import MultimodalClassifier
from medfusion.runs.checkpoints import load_weights, plain_config, read_checkpoint


def build() -> MultimodalClassifier:
    return MultimodalClassifier(
        image_encoder=partial(ImageEncoder, "test_resnet"),
        text_encoder=partial(TextEncoder, "tiny", pooling="mean"),
        fusion=GatedFusion,
        head=partial(MLPHead, hidden_dims=[16]),
        num_classes=3,
        class_names=["a", "b", "c"],
        vocab_size=40,
    )


def test_python_built_models_write_weights_only_checkpoints(tmp_path: Path) -> None:
    model = build()
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    with pytest.raises(Exception, match="weights_only"):  # what a file with the raw factories does
        torch.save(checkpoint, tmp_path / "raw.ckpt")
        torch.load(tmp_path / "raw.ckpt", weights_only=True)
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    stored = read_checkpoint(tmp_path / "model.ckpt")["hyper_parameters"]
    assert stored["fusion"] == {"class_path": "medfusion.fusion.gated.GatedFusion"}
    assert stored["head"] == {"class_path": "medfusion.heads.mlp.MLPHead", "init_args": {"hidden_dims": [16]}}
    assert stored["text_encoder"]["init_args"] == {"pooling": "mean"} and stored["text_encoder"]["args"] == ("tiny",)
    assert stored["class_names"] == ["a", "b", "c"] and stored["num_classes"] == 3
    other = build()
    load_weights(other, tmp_path / "model.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))


def test_plain_config_keeps_plain_values_and_describes_objects() -> None:
    assert plain_config({"lr": 0.1, "names": ["a"], "tta": None, "pair": (1, 2)}) == {
        "lr": 0.1,
        "names": ["a"],
        "tta": None,
        "pair": (1, 2),
    }
    nested = partial(partial(MLPHead, hidden_dims=[8]), dropout=0.2)
    assert plain_config(nested) == {
        "class_path": "medfusion.heads.mlp.MLPHead",
        "init_args": {"hidden_dims": [8], "dropout": 0.2},
    }
    assert plain_config(object()).startswith("<object object")
