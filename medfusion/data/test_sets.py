"""External test sets: their own CSVs with the training CSV's columns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TestSet:
    """An external test set: its own CSV with the same columns, optionally its own images and texts."""

    csv_path: str
    image_dir: str | None = None
    text_json: str | None = None
