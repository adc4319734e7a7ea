"""A trained model's inputs as flat named arrays, and the cases a user passes turned into them.

A deployed model takes one array per name: an image modality ``<name>`` float ``[B, 3, S, S]`` (normalised), a text
``<name>.input_ids`` and ``<name>.attention_mask`` int64 ``[B, L]``, a tabular one ``<name>.numeric`` float
``[B, Fn]``, ``<name>.numeric_missing`` bool ``[B, Fn]`` and ``<name>.categorical`` int64 ``[B, Fc]``, and for every
modality ``<name>.present`` bool ``[B]`` (False: the case lacks it). :class:`Preprocessing` builds them with the
data layer's own code (the evaluation transform, the tokenizer, the tabular statistics), so a deployed model sees
what the trained one saw. Nothing here imports Lightning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medfusion.data.errors import ConfigError, DataError
from medfusion.data.images import DECODE_ERRORS, load_rgb
from medfusion.data.tabular import TabularPreprocessor
from medfusion.data.token_ids import encode
from medfusion.data.transforms import eval_transform
from medfusion.runs.checkpoints import CheckpointError, tokenizer_from_state

PREPROCESSING_FORMAT = 1
RESIZE_RULE = "short side to image_size (bilinear, antialiased), centre crop to image_size x image_size, /255"
KINDS = ("image", "text", "tabular")


def input_names(modalities: Mapping[str, str]) -> list[str]:
    """The flat input names of modalities ``{name: kind}``, in a fixed order (see the module docstring)."""
    fields = {"image": [""], "text": [".input_ids", ".attention_mask"],
              "tabular": [".numeric", ".numeric_missing", ".categorical"]}  # fmt: skip
    names = [f"{name}{suffix}" for name, kind in modalities.items() for suffix in fields[kind]]
    return names + [f"{name}.present" for name in modalities]


def batch_of(arrays: Mapping[str, Any], modalities: Mapping[str, str]) -> dict[str, Any]:
    """The model's batch dict (``{name: input, "present": {name: flags}}``) of flat named arrays or tensors."""
    batch: dict[str, Any] = {"present": {name: arrays[f"{name}.present"] for name in modalities}}
    for name, kind in modalities.items():
        if kind == "image":
            batch[name] = arrays[name]
        elif kind == "text":
            batch[name] = {key: arrays[f"{name}.{key}"] for key in ("input_ids", "attention_mask")}
        else:
            batch[name] = {key: arrays[f"{name}.{key}"] for key in ("numeric", "numeric_missing", "categorical")}
    return batch


def flat_arrays(batch: Mapping[str, Any], modalities: Mapping[str, str]) -> dict[str, Any]:
    """The flat named arrays (tensors stay tensors) of a model's batch dict; the inverse of :func:`batch_of`."""
    flat: dict[str, Any] = {}
    for name, kind in modalities.items():
        value = batch[name]
        if kind == "image":
            flat[name] = value
        else:
            flat.update({f"{name}.{key}": item for key, item in value.items()})
    present = batch.get("present") or {}
    for name in modalities:
        flag = present.get(name)
        flat[f"{name}.present"] = flag if flag is not None else _ones_like_batch(flat)
    return {name: flat[name] for name in input_names(modalities)}


def _ones_like_batch(flat: Mapping[str, Any]) -> Any:
    """All-True presence flags for the batch of ``flat`` (a batch without flags has every modality)."""
    first = next(iter(flat.values()))
    if isinstance(first, np.ndarray):
        return np.ones(first.shape[0], dtype=bool)
    import torch

    return torch.ones(first.shape[0], dtype=torch.bool, device=first.device)


@dataclass
class Preprocessing:
    """What turns a case into a model's inputs, as plain values: the classes, the modalities ``{name: kind}``, the
    image size and normalisation, the tokenizer and its maximum length, the tabular statistics.

    Build it from a checkpoint's data state (:meth:`from_data_state`) or an export folder (:meth:`load`); write it
    with :meth:`save` (``preprocessing.json``, ``tokenizer.json``, ``tabular.json``).
    """

    class_names: list[str]
    modalities: dict[str, str]
    graded: bool = False
    image_size: int | None = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    max_length: int | None = None
    tokenizer_state: dict[str, Any] | None = None
    tabular_state: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        unknown = {n: k for n, k in self.modalities.items() if k not in KINDS}
        if unknown:
            raise ConfigError(f"Modalities {unknown} have unknown kinds; the kinds are {list(KINDS)}.")
        self.tokenizer = tokenizer_from_state(self.tokenizer_state) if self.tokenizer_state else None
        self.tabular = TabularPreprocessor.from_state(self.tabular_state) if self.tabular_state else None
        self._transform = eval_transform(self.image_size, self.mean, self.std) if self.image_size else None

    @classmethod
    def from_data_state(cls, state: Mapping[str, Any], graded: bool, where: str | Path) -> Preprocessing:
        """From a checkpoint's medfusion data state (``medfusion.data.state.find_data_state``)."""
        kinds = dict(state["modalities"])
        missing = [key for key in ("image_size", "mean", "std", "max_length") if key not in state]
        if missing and ("image" in kinds.values() or "text" in kinds.values()):
            raise CheckpointError(
                f"{where} holds no {missing}: it was written before medfusion kept them in checkpoints. Fix: test "
                "or predict it with the CLI, or retrain it with this medfusion to export or serve it."
            )
        return cls(
            class_names=list(state["class_names"]),
            modalities=kinds,
            graded=graded,
            image_size=state.get("image_size"),
            mean=list(state.get("mean") or []),
            std=list(state.get("std") or []),
            max_length=state.get("max_length"),
            tokenizer_state=state.get("tokenizer"),
            tabular_state=state.get("tabular"),
        )

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``preprocessing.json`` (and ``tokenizer.json``, ``tabular.json`` when used) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        meta = {
            "format": PREPROCESSING_FORMAT,
            "class_names": self.class_names,
            "graded": self.graded,
            "modalities": self.modalities,
            "inputs": input_names(self.modalities),
            "output": "probabilities",
            "image": {"size": self.image_size, "mean": self.mean, "std": self.std, "resize": RESIZE_RULE}
            if self.image_size
            else None,
            "text": {"max_length": self.max_length, "tokenizer": "tokenizer.json",
                     "special_tokens": self.tokenizer_state["special_tokens"]} if self.tokenizer_state else None,
            "tabular": "tabular.json" if self.tabular_state else None,
        }  # fmt: skip
        if self.tokenizer_state:
            written.append(out / "tokenizer.json")
            written[-1].write_text(self.tokenizer_state["json"], encoding="utf-8")
        if self.tabular_state:
            written.append(out / "tabular.json")
            written[-1].write_text(json.dumps(self.tabular_state, indent=1), encoding="utf-8")
        written.append(out / "preprocessing.json")
        written[-1].write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return written

    @classmethod
    def load(cls, folder: str | Path) -> Preprocessing:
        """The preprocessing :meth:`save` wrote into ``folder``; a :class:`ConfigError` names a missing or foreign
        folder."""
        folder = Path(folder)
        path = folder / "preprocessing.json"
        if not path.is_file():
            raise ConfigError(f"{folder} holds no preprocessing.json: it is not a medfusion export. Fix: name the "
                              "folder `medfusion export --out` wrote.")  # fmt: skip
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != PREPROCESSING_FORMAT:
            raise ConfigError(f"{path} is of format {meta.get('format')}; this medfusion reads {PREPROCESSING_FORMAT}.")
        image, text = meta.get("image") or {}, meta.get("text")
        tokenizer = None
        if text:
            tokenizer = {"json": (folder / text["tokenizer"]).read_text(encoding="utf-8"),
                         "special_tokens": text["special_tokens"]}  # fmt: skip
        tabular = json.loads((folder / meta["tabular"]).read_text(encoding="utf-8")) if meta.get("tabular") else None
        return cls(
            class_names=list(meta["class_names"]),
            modalities=dict(meta["modalities"]),
            graded=bool(meta.get("graded")),
            image_size=image.get("size"),
            mean=list(image.get("mean") or []),
            std=list(image.get("std") or []),
            max_length=text["max_length"] if text else None,
            tokenizer_state=tokenizer,
            tabular_state=tabular,
        )

    # ----------------------------------------------------------------------------- cases -> arrays
    def arrays(self, cases: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The flat named arrays of ``cases``, each ``{modality name: value}``: an image path, PIL image or
        ``[H, W, 3]`` uint8 array; a text; a tabular ``{column: value}``; None (or no key) where the case lacks
        the modality. Bad input is a :class:`DataError` naming the case, the modality and the fix."""
        if not cases:
            raise DataError("No case to predict. Fix: pass at least one case.")
        flat: dict[str, np.ndarray] = {}
        for index, case in enumerate(cases):
            unknown = [key for key in case if key not in self.modalities]
            if unknown:
                raise DataError(f"Case {index} has inputs {unknown} that the model does not read. Fix: name them "
                                f"among its modalities {list(self.modalities)}.")  # fmt: skip
        for name, kind in self.modalities.items():
            values = [case.get(name) for case in cases]
            present = np.array([value is not None for value in values])
            if not present.all() and len(self.modalities) == 1:
                lacking = np.flatnonzero(~present).tolist()[:10]
                raise DataError(f"Cases {lacking} have no {name!r} input, the model's only one. Fix: pass {name}=...")
            flat[f"{name}.present"] = present
            if kind == "image":
                flat[name] = np.stack([self._image(v, name, i) for i, v in enumerate(values)])
            elif kind == "text":
                ids, mask = self._texts(values, name)
                flat[f"{name}.input_ids"], flat[f"{name}.attention_mask"] = ids, mask
            else:
                flat.update({f"{name}.{key}": value for key, value in self._tabular(values, name).items()})
        return {name: flat[name] for name in input_names(self.modalities)}

    def _image(self, value: Any, name: str, index: int) -> np.ndarray:
        size = int(self.image_size or 0)
        if value is None:
            return np.zeros((3, size, size), dtype=np.float32)
        if isinstance(value, (str, Path)):
            path = Path(value).expanduser()
            if not path.is_file():
                raise DataError(f"Case {index}: the {name!r} image {path} does not exist. Fix: pass an image file.")
            try:
                value = load_rgb(path)
            except DECODE_ERRORS as err:
                raise DataError(f"Case {index}: the {name!r} image {path} cannot be read ({err}). Fix: pass a "
                                "readable PNG, JPEG or TIFF file.") from None  # fmt: skip
        elif isinstance(value, np.ndarray):
            if value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8:
                raise DataError(f"Case {index}: the {name!r} array has shape {value.shape} and dtype {value.dtype}. "
                                "Fix: pass an [H, W, 3] uint8 RGB array, a PIL image or a file path.")  # fmt: skip
            value = Image.fromarray(value, "RGB")
        elif isinstance(value, Image.Image):
            value = value.convert("RGB")
        else:
            raise DataError(f"Case {index}: the {name!r} input is a {type(value).__name__}. Fix: pass a file path, "
                            "a PIL image or an [H, W, 3] uint8 array.")  # fmt: skip
        return self._transform(value).numpy()

    def _texts(self, values: Sequence[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        for index, text in enumerate(values):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise DataError(f"Case {index}: the {name!r} text is {text!r}. Fix: pass a non-empty string, or "
                                "None when the case has no text.")  # fmt: skip
            rows.append(encode(self.tokenizer, int(self.max_length), text) if text is not None else [])
        length = max(2, max(len(row) for row in rows))
        pad = self.tokenizer.pad_token_id or 0
        ids = np.full((len(rows), length), pad, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
            if not row:
                mask[i, 0] = 1  # an absent text: one token for the encoder to read; the model replaces its output
        return ids, mask

    def _tabular(self, values: Sequence[Any], name: str) -> dict[str, np.ndarray]:
        columns = self.tabular.spec.columns
        records = []
        for index, value in enumerate(values):
            if value is None:
                records.append(dict.fromkeys(columns))
                continue
            if not isinstance(value, Mapping):
                raise DataError(f"Case {index}: the {name!r} input is a {type(value).__name__}. Fix: pass a "
                                f"{{column: value}} dict of {columns}.")  # fmt: skip
            missing, extra = [c for c in columns if c not in value], [c for c in value if c not in columns]
            if missing or extra:
                raise DataError(f"Case {index}: the {name!r} values lack {missing} and have unknown {extra}. Fix: "
                                f"give exactly the columns {columns} (None for a missing value).")  # fmt: skip
            records.append({c: _cell(value[c]) for c in columns})
            for column in self.tabular.spec.numeric:
                if not _is_number(records[-1][column]):
                    raise DataError(f"Case {index}: the numeric {name!r} column {column!r} has "
                                    f"{value[column]!r}. Fix: pass a finite number, or None when it is "
                                    "missing.")  # fmt: skip
        table = pd.DataFrame(records, columns=columns, dtype=object)
        features = self.tabular.transform(table, f"the {name!r} input of the cases")
        return {"numeric": features.numeric, "numeric_missing": features.numeric_missing,
                "categorical": features.categorical}  # fmt: skip


def _cell(value: Any) -> Any:
    """A tabular value as the CSV reader holds it: None for a missing one (None, NaN, blank text), else itself."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _is_number(value: Any) -> bool:
    """Whether a numeric cell is missing (None) or a finite number (or text of one)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
