"""Named modalities: which inputs the samples have, the kind of each, and how a config declares them.

A modality is a name and a kind (``image``, ``text`` or ``tabular``). ``image`` is the image found by id (or by
``data.image_column``); the keys of ``data.image_columns`` are further images, each from its own column
(``frontal`` and ``lateral``); the keys of ``data.crops`` are images cut from one of those around the lesion
(``local``, see :mod:`medfusion.data.crops`); ``text`` is the one text (JSON, column or template); ``tabular``
the clinical variables of ``data.numeric_columns`` and ``data.categorical_columns``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

from medfusion.data.errors import ConfigError, DataError

Kind = Literal["image", "text", "tabular"]
KINDS: tuple[str, ...] = ("image", "text", "tabular")


def resolve_modalities(
    requested: Sequence[str] | None,
    *,
    image_dir: str | None,
    image_columns: dict[str, str],
    has_text: bool,
    has_tabular: bool,
    crops: Sequence[str] = (),
) -> dict[str, str]:
    """The modality names and kinds a datamodule loads, in order: ``requested``, else every modality the options
    describe (images, then text, then tabular). A :class:`ConfigError` names an unknown or repeated name."""
    images = [*(list(image_columns) or (["image"] if image_dir else [])), *crops]
    if requested is None:
        requested = [*images, *(["text"] if has_text else []), *(["tabular"] if has_tabular else [])]
    requested = list(requested)
    if not requested:
        raise ConfigError(
            "data.modalities is empty and the options describe no input. Fix: set data.image_dir, a text source "
            "(data.text_json, text_column or text_template) or tabular columns, or list data.modalities."
        )
    repeated = [name for name, count in Counter(requested).items() if count > 1]
    if repeated:
        raise ConfigError(f"data.modalities lists {repeated} twice. Fix: list each modality once.")
    clash = [name for name in image_columns if name in ("text", "tabular")]
    if clash:
        raise ConfigError(f"data.image_columns names {clash}, which are other kinds of modality. Fix: rename them.")
    clash = [name for name in crops if name in ("text", "tabular", "image", *image_columns)]
    if clash:
        raise ConfigError(f"data.crops names {clash}, which are modalities already. Fix: rename the crops.")
    kinds: dict[str, str] = {}
    for name in requested:
        if name in image_columns or name == "image" or name in crops:
            kinds[name] = "image"
        elif name in ("text", "tabular"):
            kinds[name] = name
        else:
            raise ConfigError(
                f"Unknown modality {name!r} in data.modalities {requested}. The names are 'image' (files by id or "
                f"data.image_column), the keys of data.image_columns ({sorted(image_columns)}), 'text' and "
                f"'tabular'. Fix: declare {name!r} in data.image_columns: {{{name}: <path column>}}, or drop it."
            )
    if "image" in kinds.values() and image_dir is None:
        raise DataError(
            f"Images are used (modalities {[n for n, k in kinds.items() if k == 'image']}) but data.image_dir is not "
            "set. Fix: set it, or drop the image modalities from data.modalities."
        )
    if "tabular" in kinds and not has_tabular:
        raise ConfigError(
            "'tabular' is in data.modalities but no tabular column is set. Fix: set data.numeric_columns and/or "
            "data.categorical_columns, or drop 'tabular' from data.modalities."
        )
    return kinds


def check_allow_missing(
    allow_missing: Sequence[str] | None, kinds: dict[str, str], path_column: Callable[[str], str | None]
) -> list[str]:
    """The modalities a sample may lack, checked: names of ``kinds``, and an image modality only with a column of
    paths (``path_column(name)``; an empty cell is what marks it absent)."""
    allowed = list(allow_missing or [])
    unknown = [name for name in allowed if name not in kinds]
    if unknown:
        raise ConfigError(
            f"data.allow_missing names {unknown}, which are not among the modalities {list(kinds)}. Fix: name "
            "modalities the data loads, or add them to data.modalities."
        )
    for name in allowed:
        if kinds[name] == "image" and path_column(name) is None:
            raise DataError(
                f"data.allow_missing includes {name!r}, but its images are found by id: only an empty cell of its "
                "path column marks a sample without it. Fix: set data.image_column (or its data.image_columns "
                f"entry), or drop {name!r} from data.allow_missing."
            )
    return allowed


def check_same_modalities(data: Sequence[str], model: Sequence[str], where: str = "the model") -> None:
    """A :class:`ConfigError` naming both lists when the data's modality names differ from the model's."""
    if sorted(data) != sorted(model):
        raise ConfigError(
            f"The data has the modalities {list(data)} but {where} has encoders for {list(model)}. Fix: give the "
            "data and the model the same modality names (data.modalities; the CLI links them into the model)."
        )
