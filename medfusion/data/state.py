"""What a trained model needs from its data, as the datamodule's ``state_dict``: class names and counts, the
modalities, the text tokenizer and the tabular statistics. Lightning stores it in every checkpoint, so
``test``/``predict`` need no training data (``MultimodalDataModule(from_checkpoint=...)``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medfusion.data.errors import ConfigError
from medfusion.runs.checkpoints import CheckpointError

DATA_STATE_FORMAT = 1
_MARK = "medfusion_data_format"


def find_data_state(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The medfusion datamodule state inside a checkpoint (Lightning keys it by the datamodule's class name), or a
    :class:`CheckpointError` when it has none."""
    for value in checkpoint.values():
        if isinstance(value, dict) and _MARK in value:
            if value[_MARK] != DATA_STATE_FORMAT:
                raise CheckpointError(
                    f"{path} holds data settings of format {value[_MARK]}; this medfusion reads {DATA_STATE_FORMAT}."
                )
            return value
    raise CheckpointError(
        f"{path} holds no medfusion data settings (class names, tokenizer, tabular statistics): it was not written "
        "by a fit with a medfusion datamodule. Fix: test or predict with the training data (data.csv_path) instead."
    )


def mark(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` tagged as a medfusion data state of this format."""
    return {_MARK: DATA_STATE_FORMAT, **state}


def check_same_state(loaded: dict[str, Any], current: dict[str, Any]) -> None:
    """A :class:`ConfigError` when a checkpoint's data state (``loaded``) differs from the one this datamodule
    built (``current``): its datasets were made with other classes, modalities, tokenizer or statistics."""
    for key, what in (
        ("class_names", "classes"),
        ("modalities", "modalities"),
        ("knowledge", "knowledge passages (data.knowledge)"),  # before the tokenizer, which learnt their words
        ("tokenizer", "text tokenizer"),
        ("tabular", "tabular statistics"),
    ):
        if not _same(loaded.get(key), current.get(key)):
            raise ConfigError(
                f"The checkpoint's {what} differ from those this data gives ({key}: {_short(loaded.get(key))} vs "
                f"{_short(current.get(key))}): it was trained on other data. Fix: use the training data of the "
                "checkpoint, or test/predict with data.from_checkpoint (the CLI sets it from --ckpt_path)."
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
