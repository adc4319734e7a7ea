"""Checkpoints: safe reading (``weights_only``: no code from the file runs), the tokenizer and class names they
carry so that a trained model needs no training data, and the class check against new data."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a Lightning ``.ckpt`` file, loaded on CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by a fit")
    return checkpoint


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (strictly: every key must match) after the model's own
    ``on_load_checkpoint`` checks (class names); returns the checkpoint."""
    checkpoint = read_checkpoint(path)
    if hasattr(model, "on_load_checkpoint"):
        model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint


def plain_config(value: Any) -> Any:
    """``value`` with classes and ``functools.partial`` factories written as ``{"class_path", "init_args"}``
    dicts (as LightningCLI configs hold them) and other objects as their ``repr``: what a checkpoint's
    ``hyper_parameters`` of a model built in Python must become to load with ``weights_only=True``."""
    if isinstance(value, (str, int, float, bool, type(None), torch.Tensor)):
        return value
    if isinstance(value, dict):
        return {key: plain_config(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_config(item) for item in value)
    if isinstance(value, partial):
        inner = plain_config(value.func)
        init = {**(inner.get("init_args", {}) if isinstance(inner, dict) else {}), **plain_config(value.keywords)}
        path = inner["class_path"] if isinstance(inner, dict) else inner
        return {"class_path": path, "init_args": init, **({"args": plain_config(value.args)} if value.args else {})}
    if callable(value) and hasattr(value, "__qualname__"):  # a class or a function
        return {"class_path": f"{value.__module__}.{value.__qualname__}"}
    return repr(value)


def tokenizer_state(tokenizer: PreTrainedTokenizerBase | None) -> dict[str, Any] | None:
    """A fast tokenizer as plain strings (its ``tokenizer.json`` and special tokens), to store in a checkpoint."""
    if tokenizer is None:
        return None
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: it cannot be stored in a checkpoint")
    return {"json": tokenizer.backend_tokenizer.to_str(), "special_tokens": dict(tokenizer.special_tokens_map)}


def tokenizer_from_state(state: dict[str, Any]) -> PreTrainedTokenizerFast:
    """The tokenizer :func:`tokenizer_state` stored."""
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(state["json"]), **state["special_tokens"])


def check_class_names(trained: Sequence[str], data: Sequence[str], ckpt_path: str | Path | None = None) -> None:
    """Raise when a checkpoint's classes (names and order) differ from the data's, listing both."""
    if list(trained) != list(data):
        where = f" {ckpt_path}" if ckpt_path else ""
        raise ValueError(
            f"The checkpoint{where} was trained on the classes {list(trained)} but the data has "
            f"{list(data)}. Use data with the same classes in the same order (set data.class_names: "
            f"{list(trained)}), or train a new model on these classes."
        )
