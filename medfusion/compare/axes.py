"""The axes of a comparison and its cells: what each cell sets, its name, and its ``medfusion fit`` arguments.

An axis is a ``medfusion fit`` option with the values to try: the named axes ``fusion``, ``head`` and ``loss``
(registered names, classes or config fragments), ``config`` (config fragments, each a whole variant) or any other
option by its dotted key (``model.lr``, ``data.batch_size``, ``model.head.init_args.hidden_dims``,
``data.train_fraction``). Seeds are not an axis: every configuration runs with every seed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medfusion.data.errors import ConfigError
from medfusion.fusion import FUSIONS
from medfusion.heads import HEADS
from medfusion.losses import LOSSES

NAMED = ("fusion", "head", "loss")  # registry items; their cell-name part is the item's label alone
FRAGMENTS = "config"  # an axis of config fragments: each value a YAML file passed as --config
Mode = Literal["product", "one_at_a_time"]


def label(item: str) -> str:
    """The short name of a grid item: a registry name as is, a YAML fragment by its file stem."""
    return Path(item).stem if item.endswith((".yaml", ".yml")) else item.rsplit(".", 1)[-1]


def item_args(kind: str, item: str) -> list[str]:
    """CLI arguments selecting ``item`` for ``kind`` (fusion, head, loss): a YAML fragment (``--config``), a
    registered name (``gated``, ``moe``, ``focal``), or a class (``FocalLoss``, ``my.module.MyHead``)."""
    if item.endswith((".yaml", ".yml")):
        if not Path(item).is_file():
            raise FileNotFoundError(f"The {kind} config {item} does not exist")
        return ["--config", item]
    registry = {"fusion": FUSIONS, "head": HEADS, "loss": LOSSES}[kind]
    if "." in item:
        class_path = item
    elif kind == "loss" and item not in registry and item[:1].isupper():  # a loss class by name: FocalLoss
        class_path = f"medfusion.losses.{item}"
    else:
        cls = registry.get(item)  # an unknown name raises, listing the registered ones
        class_path = f"{cls.__module__}.{cls.__qualname__}"
    return [f"--model.init_args.{kind}", json.dumps({"class_path": class_path})]


def format_value(value: Any) -> str:
    """A value as it appears in cell names and tables: ``0.003``, ``512x256``, ``true``, ``resnet50``, a
    fragment's stem."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    text = str(value)
    return label(text) if text.endswith((".yaml", ".yml")) else re.sub(r"[/\\\s]+", "_", text)


def is_numeric(value: Any) -> bool:
    """A number that can lie on a plot axis (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Axis:
    """One option varied by the grid: its dotted ``key``, the ``values`` tried, and its ``short`` name."""

    key: str
    values: tuple[Any, ...]
    short: str

    def args(self, value: Any) -> list[str]:
        """The ``medfusion fit`` arguments that set this axis to ``value``."""
        if self.key in NAMED:
            return item_args(self.key, value)
        if self.key == FRAGMENTS:
            if not Path(value).is_file():
                raise ConfigError(f"The config fragment {value} (axis config) does not exist")
            return ["--config", str(value)]
        shown = value if isinstance(value, str) else json.dumps(value)  # a str option takes its text as is
        return [f"--{self.key}={shown}"]

    def tag(self, value: Any) -> str:
        """The cell-name part of ``value``: a registry item or fragment by its label, an option as ``short=value``."""
        if self.key in NAMED or self.key == FRAGMENTS:
            return label(str(value))
        return f"{self.short}={format_value(value)}"

    def column(self, value: Any) -> Any:
        """``value`` in the results and leaderboard tables: numbers as they are, everything else as text."""
        if self.key in NAMED or self.key == FRAGMENTS:
            return label(str(value))
        return value if is_numeric(value) else format_value(value)

    @property
    def numeric(self) -> bool:
        return all(is_numeric(v) for v in self.values)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix (``init_args`` left out) that no other key ends with: ``model.lr`` ->
    ``lr``; ``model.dropout`` and ``model.head.init_args.dropout`` -> ``model.dropout`` and ``head.dropout``."""
    parts = {key: [p for p in key.split(".") if p != "init_args"] for key in keys}
    names = {}
    for key, own in parts.items():
        for n in range(1, len(own) + 1):
            suffix = own[-n:]
            if not any(other != key and theirs[-n:] == suffix for other, theirs in parts.items()):
                break
        names[key] = ".".join(suffix)
    return names


def make_axes(named: Mapping[str, Sequence[Any] | None], options: Mapping[str, Sequence[Any]] | None) -> list[Axis]:
    """The grid's axes: the named ones given (fusion, head, loss, in that order), then ``options`` in their order.
    Refuses an empty axis, a value given twice and a key the named axes already hold."""
    given = {key: list(values) for key, values in named.items() if values is not None}
    for key, values in (options or {}).items():
        kind = key.removeprefix("model.init_args.").removeprefix("model.")
        if kind in NAMED:
            raise ConfigError(f"axis {key!r}: set the {kind} axis with --{kind}s (names, classes or fragments)")
        if key == "seed" or key == "seed_everything":
            raise ConfigError("seeds are not an axis: set them with --seeds")
        given[key] = list(values) if isinstance(values, (list, tuple)) else [values]
    shorts = short_names(list(given))
    axes = []
    for key, values in given.items():
        if not values:
            raise ConfigError(f"axis {key!r} has no values")
        axis = Axis(key, tuple(values), shorts[key])
        tags = [axis.tag(v) for v in values]
        if len(set(tags)) != len(tags):
            raise ConfigError(f"axis {key!r} holds a value twice (as cell names: {tags})")
        axes.append(axis)
    return axes


@dataclass(frozen=True, eq=False)
class Cell:
    """One run of the grid: a value for each axis and a seed."""

    settings: tuple[tuple[Axis, Any], ...]
    seed: int

    @property
    def name(self) -> str:
        return "-".join([*(axis.tag(value) for axis, value in self.settings), f"s{self.seed}"])

    @property
    def configuration(self) -> str:
        """The name without the seed: the leaderboard row it belongs to."""
        return self.name.rsplit("-", 1)[0]

    def columns(self) -> dict[str, Any]:
        """The cell's axis values as table columns (keyed by axis key)."""
        return {axis.key: axis.column(value) for axis, value in self.settings}


def build_cells(
    axes: Sequence[Axis], seeds: Sequence[int], mode: Mode = "product", base_point: Mapping[str, Any] | None = None
) -> list[Cell]:
    """The grid's cells, seeds innermost (so a cut-short grid has whole configurations).

    ``product``: every combination of the axes' values. ``one_at_a_time``: the base point (``base_point``'s value
    of an axis, default its first), then each axis varied alone through its other values with the rest at the
    base point: ``1 + sum(len(axis) - 1)`` configurations, as a control-variable study varies them.
    """
    if mode == "product":
        points = [tuple(zip(axes, combo, strict=True)) for combo in itertools.product(*(a.values for a in axes))]
    elif mode == "one_at_a_time":
        base = []
        for axis in axes:
            value = (base_point or {}).get(axis.key, axis.values[0])
            if value not in axis.values:
                raise ConfigError(f"base_point {axis.key}={value!r} is not one of the axis' values {list(axis.values)}")
            base.append(value)
        unknown = set(base_point or {}) - {a.key for a in axes}
        if unknown:
            raise ConfigError(f"base_point names no axis: {sorted(unknown)}")
        points = [tuple(zip(axes, base, strict=True))]
        for i, axis in enumerate(axes):
            for value in axis.values:
                if value != base[i]:
                    points.append(tuple(zip(axes, [*base[:i], value, *base[i + 1 :]], strict=True)))
    else:
        raise ConfigError(f"mode must be 'product' or 'one_at_a_time', got {mode!r}")
    return [Cell(point, seed) for point in points for seed in seeds]


def cell_args(cell: Cell, base: Sequence[str], overrides: Sequence[str], cell_dir: Path) -> list[str]:
    """The ``medfusion fit`` arguments of a cell (without the subcommand): the base configs, the cell's fusion, head
    and loss, the overrides, the cell's other axes (after the overrides, so the axis wins), the seed, and a CSV
    logger writing into ``cell_dir``."""
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(cell_dir.parent), "name": cell_dir.name, "version": ""},
    }
    named = [arg for axis, value in cell.settings if axis.key in NAMED for arg in axis.args(value)]
    options = [arg for axis, value in cell.settings if axis.key not in NAMED for arg in axis.args(value)]
    return [
        *(arg for config in base for arg in ("--config", config)),
        *named,
        *overrides,
        *options,
        f"--seed_everything={cell.seed}",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
