"""A trained model rebuilt from its checkpoint alone: its class and options (the checkpoint's hyper-parameters, as
the CLI stores them), then its weights; no config file, datamodule or training data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from medfusion.data.state import find_data_state
from medfusion.models import ClassifierModule
from medfusion.runs.checkpoints import CheckpointError, check_finite, read_checkpoint

TRUSTED = ("medfusion.",)


def _class_paths(value: Any) -> Iterator[str]:
    """Every ``class_path`` in a nested config."""
    if isinstance(value, dict):
        if isinstance(value.get("class_path"), str):
            yield value["class_path"]
        for item in value.values():
            yield from _class_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _class_paths(item)


def model_from_checkpoint(
    path: str | Path, trusted: Sequence[str] = TRUSTED, model_class: type[ClassifierModule] | None = None
) -> tuple[ClassifierModule, dict[str, Any]]:
    """The model of a local checkpoint in eval mode, and the checkpoint (read weights-only).

    The classes the checkpoint names (the model, its encoders, fusion, head, loss) are built only when their
    import path starts with one of ``trusted`` (default ``medfusion.``): building a class runs its code, so a
    checkpoint from elsewhere cannot make it run anything else. Add your package's prefix for your own heads or
    fusions. ``model_class`` is needed only for a checkpoint of a model built in Python (without the CLI).
    """
    checkpoint = read_checkpoint(path)
    options = dict(checkpoint.get("hyper_parameters") or {})
    class_path = options.pop("_class_path", None)
    options.pop("_instantiator", None)
    if class_path is None:
        if model_class is None:
            raise CheckpointError(f"{path} does not name its model class (it was built in Python, not by the CLI). "
                                  "Fix: pass model_class=MultimodalClassifier (or the class you trained).")  # fmt: skip
        class_path = f"{model_class.__module__}.{model_class.__qualname__}"
    foreign = sorted({p for p in [class_path, *_class_paths(options)] if not p.startswith(tuple(trusted))})
    if foreign:
        raise CheckpointError(f"{path} names classes outside {list(trusted)}: {foreign}. Building them would run "
                              "their code. Fix: pass trusted=[..., '<their package>.'] if you trust that "
                              "checkpoint and those packages.")  # fmt: skip
    find_data_state(checkpoint, path)  # refuse a checkpoint without the data it needs, before building anything
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(ClassifierModule, "model", fail_untyped=False)
    config = parser.parse_object({"model": {"class_path": class_path, "init_args": options}})
    model = parser.instantiate(config).model
    check_finite(checkpoint["state_dict"], str(path))
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
