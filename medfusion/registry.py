"""A tiny name -> class registry, shared by the fusion and head families (timm-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short names (``"gated"``) to classes so configs and Python can build by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@FUSIONS.register("gated")``."""

        def decorator(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._classes[name].__name__}")
            self._classes[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def unregister(self, name: str) -> type[T]:
        """Remove and return the class registered as ``name`` (e.g. a plugin defined for one experiment)."""
        cls = self.get(name)
        del self._classes[name]
        return cls

    def get(self, name: str) -> type[T]:
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(f"Unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes
