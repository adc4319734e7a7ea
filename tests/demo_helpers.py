"""Helpers of the demo-dataset tests (not a test module): its size and header, and readers of the files it
writes (metadata.csv, reports.json, images/)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

N = 300  # cases of the demo dataset that the test modules generate (seed 0)
HEADER = ["image_id", "label", "patient_id", "age", "sex", "site", "ldh_u_l"]


def read_metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_header(root: Path) -> list[str]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def read_reports(root: Path) -> dict[str, str]:
    return json.loads((root / "reports.json").read_text(encoding="utf-8"))


def load_image(root: Path, name: str) -> np.ndarray:
    with Image.open(root / "images" / (name if name.endswith(".png") else f"{name}.png")) as im:
        return np.asarray(im)
