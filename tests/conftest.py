"""Shared fixtures: the real HAM10000 metadata, and a subset of it laid out with tiny generated images."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

# Under pytest-xdist (pyproject's addopts) each worker process gets its share of the cores for torch's threads:
# idle threads spinning on a core another worker needs cost far more than they gain on tests' small tensors.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))

# The reference data lives next to the repository (../shared/data), never inside it.
HAM_METADATA = Path(__file__).parents[2] / "shared" / "data" / "HAM10000_metadata.csv"


@dataclass
class HamLayout:
    """A HAM10000-shaped dataset: real metadata rows, 8x8 JPEG placeholders split like the release."""

    csv_path: Path  # the chosen rows of the real CSV, byte for byte, under the real header
    image_dir: Path  # part_1/ and part_2/, one <image_id>.jpg per row
    table: pd.DataFrame  # those rows (ids, dx, lesion_id as strings; age float with NaN)


@pytest.fixture(scope="session", autouse=True)
def medfusion_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """medfusion's cache directory (demo data, image check records, set-up entries) in a folder of this session,
    not the user's ~/.cache: tests start from nothing and share what earlier tests of the session cached."""
    before = os.environ.get("MEDFUSION_CACHE")
    root = tmp_path_factory.mktemp("medfusion_cache")
    os.environ["MEDFUSION_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("MEDFUSION_CACHE", None)
    else:
        os.environ["MEDFUSION_CACHE"] = before


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they gain nothing from more, and idle threads spinning on a busy 2-core CI box cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ham_metadata_csv() -> Path:
    """The real HAM10000 metadata CSV (10,015 rows); the test is skipped when it is absent."""
    if not HAM_METADATA.is_file():
        pytest.skip(f"HAM10000 metadata not found at {HAM_METADATA} (expected in ../shared/data next to the repo)")
    return HAM_METADATA


@pytest.fixture(scope="session")
def ham_layout(ham_metadata_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> HamLayout:
    """All images of ~300 lesions: the first 40 lesions of each dx (by id) plus lesions with a missing
    age and/or an ``unknown`` sex; images go to ``part_1/`` (ISIC_0024306-ISIC_0029305) or ``part_2/`` as HAM ships."""
    full = pd.read_csv(ham_metadata_csv, dtype={"lesion_id": str, "image_id": str, "dx": str})
    lesions: set[str] = set()
    for _, rows in full.groupby("dx"):
        lesions.update(sorted(rows["lesion_id"].unique())[:40])
    no_age, unknown_sex = full["age"].isna(), full["sex"] == "unknown"
    for rows in (no_age & ~unknown_sex, ~no_age & unknown_sex, no_age & unknown_sex):
        lesions.update(sorted(full.loc[rows, "lesion_id"].unique())[:4])

    root = tmp_path_factory.mktemp("ham10000")
    image_dir = root / "images"
    for part in ("part_1", "part_2"):
        (image_dir / part).mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (180, 120, 90)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()

    lines = ham_metadata_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [lines[0]]
    for line in lines[1:]:
        lesion_id, image_id = next(csv.reader([line]))[:2]
        if lesion_id in lesions:
            kept.append(line)
            part = "part_1" if int(image_id.removeprefix("ISIC_")) <= 29305 else "part_2"
            (image_dir / part / f"{image_id}.jpg").write_bytes(jpeg)
    csv_path = root / "HAM10000_metadata.csv"
    csv_path.write_text("".join(kept), encoding="utf-8")
    table = pd.read_csv(csv_path, dtype={"lesion_id": str, "image_id": str, "dx": str})
    return HamLayout(csv_path=csv_path, image_dir=image_dir, table=table)


def demo_run_overrides(
    root: Path,
    *,
    num_samples: int = 100,
    batch_size: int = 16,
    image_size: int = 32,
    data_dir: Path | None = None,
    runs_dir: Path | None = None,
    set_runs_dir: bool = True,
    **options: object,
) -> list[str]:
    """The one tiny-run setup of the tests that train through the CLI on a demo config: ``num_samples`` demo
    cases at ``image_size`` px under ``data_dir`` (default ``root/data``), the tiny ``test_resnet`` CNN, no
    workers or progress bar, runs under ``runs_dir`` (default ``root/runs``; ``set_runs_dir=False``: where the
    config says, e.g. ``compare``'s cell directories); ``options`` add ``--<key>=<value>`` overrides
    (``trainer__max_epochs=2`` for ``--trainer.max_epochs=2``)."""
    args = [
        f"--data.root={data_dir or root / 'data'}",
        f"--data.num_samples={num_samples}",
        f"--data.demo_image_size={image_size}",
        f"--data.image_size={image_size}",
        f"--data.batch_size={batch_size}",
        "--data.num_workers=0",
        "--model.image_encoder.model_name=test_resnet",
        *([f"--trainer.logger.init_args.save_dir={runs_dir or root / 'runs'}"] if set_runs_dir else []),
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    return args + [f"--{key.replace('__', '.')}={value}" for key, value in options.items()]


@pytest.fixture(scope="session")
def tiny_run():
    """:func:`demo_run_overrides`, the shared tiny-run setup (CLI overrides for the demo configs)."""
    return demo_run_overrides


def quiet_trainer(**options: object):
    """A Lightning Trainer for tests: CPU, no logger, checkpoints, progress bar or model summary, one epoch;
    ``options`` override or add Trainer arguments."""
    import lightning as L

    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**settings, **options})


@pytest.fixture(scope="session")
def trainer_factory():
    """:func:`quiet_trainer`, the shared quiet Trainer of the tests that fit in Python."""
    return quiet_trainer


@pytest.fixture(scope="session")
def small_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-layer, 32-wide BERT config folder with a 64-token vocabulary: the "local path" route of TextEncoder,
    fast enough for many fits."""
    from transformers import BertConfig

    path = tmp_path_factory.mktemp("small_bert")
    BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def ham_dm(ham_layout: HamLayout):
    """The datamodule of the HAM10000-shaped layout (see ``data_helpers.ham_module``)."""
    from data_helpers import ham_module

    return ham_module(ham_layout)
