"""ONNX Runtime, the optional dependency of export and serving (``pip install 'medfusion[export]'``)."""

from __future__ import annotations

from typing import Any

from medfusion.data.errors import ConfigError

INSTALL = "pip install 'medfusion[export]'"


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`ConfigError` naming the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"ONNX export and serving need onnx and onnxruntime. Fix: {INSTALL}.") from None
    return onnxruntime
