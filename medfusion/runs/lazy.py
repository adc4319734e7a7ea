"""Package attributes imported on first use, so that importing a package (or one of its light modules) does not
pay for its heavy ones: ``__getattr__, __dir__ = lazy_exports(__name__, {"Name": "package.module"})``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` (``exports[name]``'s attribute ``name``, imported then) and ``__dir__``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
