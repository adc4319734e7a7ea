"""The model side of named modalities: one encoder per name, built from the data's specs, and the batch access."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medfusion.data.errors import ConfigError
from medfusion.encoders import ImageEncoder, TabularEncoder, TextEncoder
from medfusion.encoders.slices import SliceStackEncoder
from medfusion.encoders.study import StudyEncoder

ImageEncoderFactory = Callable[[], ImageEncoder]
TextEncoderFactory = Callable[[], TextEncoder]
TabularEncoderFactory = Callable[[int, Sequence[int]], TabularEncoder]
Specs = dict[str, dict[str, Any]]


def build_encoder(name: str, spec: dict[str, Any], factories: dict[str, Callable[..., nn.Module]]) -> nn.Module:
    """The encoder of modality ``name`` from its spec (``{"kind", ...sizes}``, see the datamodule's
    ``modality_specs``) and the factory of its kind: images ``factory()`` (a slice stack, ``"slices": K``, wrapped
    by ``factories["slices"]``, default :class:`SliceStackEncoder`; a study set, ``"study": True``, by
    ``factories["study"]``, default :class:`StudyEncoder`), text ``factory(vocab_size=V)``, tabular
    ``factory(num_numeric, cardinalities)``."""
    kind = spec.get("kind")
    if kind == "image":
        if spec.get("study"):
            return factories.get("study", StudyEncoder)(factories["image"])
        if spec.get("slices"):
            return factories.get("slices", SliceStackEncoder)(factories["image"], num_slices=int(spec["slices"]))
        return factories["image"]()
    if kind == "text":
        return factories["text"](vocab_size=spec.get("vocab_size"))
    if kind == "tabular":
        if "num_numeric" not in spec or "cardinalities" not in spec:
            raise ConfigError(
                f"The tabular modality {name!r} needs its sizes (num_numeric, cardinalities): link them from the data "
                "(the CLI does), or pass model modalities={'tabular': datamodule.modality_specs['tabular'], ...}."
            )
        return factories["tabular"](int(spec["num_numeric"]), list(spec["cardinalities"]))
    raise ConfigError(f"Modality {name!r} has kind {kind!r}; the kinds are 'image', 'text' and 'tabular'.")


def check_specs(specs: Specs) -> Specs:
    """``specs`` as plain dicts, each with a kind."""
    if not isinstance(specs, dict) or not specs:
        raise ConfigError(f"model modalities must be a non-empty dict {{name: {{kind: ...}}}}, got {specs!r}")
    for name, spec in specs.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ConfigError(f"model modality {name!r} needs a spec {{kind: image|text|tabular, ...}}, got {spec!r}")
    return {name: dict(spec) for name, spec in specs.items()}


def batch_size_of(batch: dict[str, Any]) -> int:
    """The number of samples of a batch."""
    if "label" in batch:
        return len(batch["label"])
    return len(batch["id"])


def present_mask(batch: dict[str, Any], name: str, device: torch.device) -> torch.Tensor:
    """``batch["present"][name]`` as bool ``[B]``; all True when the batch has no such flag."""
    flag = (batch.get("present") or {}).get(name)
    if flag is None:
        return torch.ones(batch_size_of(batch), dtype=torch.bool, device=device)
    return flag.to(device=device, dtype=torch.bool)


def require(batch: dict[str, Any], name: str, model: str) -> Any:
    """``batch[name]`` or a clear error saying which datamodule setting provides it."""
    if name not in batch:
        inputs = [key for key in batch if key not in ("id", "label", "present", "error", "replaced", "index")]
        raise KeyError(f"{model} needs batch[{name!r}] but the batch has {inputs}: add {name!r} to data.modalities")
    return batch[name]


def require_present(batch: dict[str, Any], name: str, model: str) -> None:
    """A clear error when some samples of the batch lack modality ``name``, the only input of a single-modality
    model."""
    present = (batch.get("present") or {}).get(name)
    if present is None or torch.compiler.is_exporting() or bool(present.all()):  # exported: the Predictor checks
        return
    ids = batch.get("id") or list(range(len(present)))
    absent = [sample_id for sample_id, p in zip(ids, present.tolist(), strict=True) if not p][:5]
    raise ValueError(
        f"{model} got samples without their {name!r} input (ids {absent}...), its only input. Fix: train a "
        f"MultimodalClassifier (it handles absent modalities), or drop {name!r} from data.allow_missing (and "
        "data.robustness off)."
    )
