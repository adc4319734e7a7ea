"""Checkpoints: safe reading (``weights_only``: no code from the file runs; URLs only on request; finite weights),
the tokenizer and class names they carry so that a trained model needs no training data, and the class check
against new data."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: remote without consent, unreadable, unsafe, or with non-finite weights."""


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is a URL (``http://``, ``s3://``, ...) rather than a local file."""
    return "://" in str(path)


def fetch_remote(url: str, cache_dir: str | Path) -> Path:
    """Download the checkpoint at ``url`` (any fsspec protocol) once into ``cache_dir`` and return the local copy,
    which is then loaded like any local file (``weights_only``). Only for URLs the user opted in to."""
    import fsspec

    target = Path(cache_dir).expanduser() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.ckpt"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            streaming = {"block_size": 0} if url.startswith(("http://", "https://")) else {}  # no range requests
            with fsspec.open(url, "rb", **streaming) as source, tmp.open("wb") as out:
                shutil.copyfileobj(source, out)
            os.replace(tmp, target)
        except Exception as err:  # OSError, or the protocol's own (aiohttp, botocore, ...)
            raise CheckpointError(f"Could not download the checkpoint {url}: {err}. Fix: check the URL.") from err
        finally:
            tmp.unlink(missing_ok=True)
    return target


def load_safely(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, so no code in the file runs.

    A URL is refused (download it, or let the CLI do so with ``--allow_remote_ckpt true``), and every way a file
    can fail to load (missing, truncated, not a checkpoint, pickled objects) is a :class:`CheckpointError` that
    names the file and the fix.
    """
    if is_remote(path):
        raise CheckpointError(
            f"Refusing the remote checkpoint {path}: medfusion loads local files only. Fix: download it and pass the "
            "local path, or add --allow_remote_ckpt true to download it first (it is still loaded weights-only)."
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} not found. Fix: pass the path of a .ckpt file written by a fit.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "global" in line]
        first = lines[0].strip().rstrip(".") if lines else "a pickled object"
        raise CheckpointError(
            f"Refusing {path}: it holds objects other than tensors and plain values ({first}), and loading them "
            "could run code from the file. medfusion loads checkpoints weights-only. Fix: use a checkpoint written "
            "by medfusion fit, or re-save your weights as a plain state_dict."
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... for a damaged file
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(err).__name__}: {err}): it is truncated or not a "
            "checkpoint. Fix: pass a complete .ckpt written by medfusion fit (e.g. checkpoints/last.ckpt)."
        ) from None


# The layout of what medfusion writes into a checkpoint (state_dict keys, the "medfusion" entry). Raise it with
# every change that an older checkpoint would not load into; there are no converters between formats.
CHECKPOINT_FORMAT = 3


def check_format(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint of another medfusion checkpoint format, naming both versions."""
    found = (checkpoint.get("medfusion") or {}).get("format", 1)
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was written in medfusion checkpoint format {found}; this medfusion reads format "
            f"{CHECKPOINT_FORMAT} (its fusions, heads and stored data settings are laid out differently). Fix: "
            "retrain with this version, or use the medfusion version that wrote the checkpoint."
        )


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict of a medfusion ``.ckpt`` file, loaded with ``weights_only=True`` (on CPU by default),
    of this checkpoint format."""
    checkpoint = load_safely(path, map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by a fit")
    check_format(checkpoint, path)
    return checkpoint


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """The names of floating-point tensors in ``state_dict`` holding NaN or infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def check_finite(state_dict: dict[str, Any], where: str) -> None:
    """Refuse weights with NaN or infinity (a diverged run): they predict nothing but ``nan``."""
    bad = non_finite_tensors(state_dict)
    if bad:
        tensors = sum(isinstance(v, torch.Tensor) for v in state_dict.values())
        raise CheckpointError(
            f"{where}: {len(bad)} of {tensors} weight tensors hold NaN or infinity (e.g. {', '.join(bad[:3])}); the "
            "run that wrote them diverged. Fix: use an earlier checkpoint of that run, or retrain with a lower "
            "model.lr (or 32-bit precision)."
        )


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (strictly: every key must match) after the model's own
    ``on_load_checkpoint`` checks (class names, finite weights); returns the checkpoint."""
    checkpoint = read_checkpoint(path)
    check_finite(checkpoint["state_dict"], str(path))
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
