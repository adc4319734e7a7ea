"""The extension test of the house: a new fusion is one file plus one config fragment. Defined in a module of its
own (outside medfusion), it is used by its registered name in ``fit``, ``compare``, ``explain`` and the W&B run
name with no edit anywhere else."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path

import pytest
import yaml
from conftest import demo_run_overrides

from medfusion.cli import configured, describe_run, main
from medfusion.compare import run_grid
from medfusion.fusion import FUSIONS
from medfusion.models import ClassifierModule

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).parents[1] / "configs"

TOY_MODULE = '''
"""A toy fusion: a scaled sum of per-input projections."""

import torch
from torch import nn

from medfusion.fusion import FUSIONS, Fusion


@FUSIONS.register("toy_sum")
class ToySumFusion(Fusion):
    def __init__(self, dims=None, out_dim=None, *, image_dim=None, text_dim=None, scale: float = 1.0) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        self.scale = scale
        self.proj = nn.ModuleDict({name: nn.Linear(dim, out_dim) for name, dim in self.dims.items()})

    def fuse(self, inputs, masks) -> torch.Tensor:
        return self.scale * sum(self.proj[name](x) for name, x in inputs.items())
'''


@pytest.fixture
def toy_fusion(tmp_path: Path, monkeypatch):
    """The toy module on the path and imported (so registered), and its config fragment; unregistered after."""
    (tmp_path / "toy_fusion_ext.py").write_text(TOY_MODULE)
    fragment = tmp_path / "toy_sum.yaml"
    spec = {"class_path": "toy_fusion_ext.ToySumFusion", "init_args": {"scale": 2.0}}
    fragment.write_text(yaml.safe_dump({"model": {"init_args": {"fusion": spec}}}))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_fusion_ext")
    yield fragment
    FUSIONS.unregister("toy_sum")
    sys.modules.pop("toy_fusion_ext", None)


def test_a_new_fusion_is_one_file_and_one_fragment(tmp_path: Path, toy_fusion: Path) -> None:
    overrides = demo_run_overrides(tmp_path, num_samples=60, set_runs_dir=False, evaluation__embedding_map="false")
    args = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(toy_fusion), *overrides]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"]

    # fit, and the W&B run name
    main(["fit", *args, "--trainer.max_epochs=1"])
    run = tmp_path / "runs" / "demo" / "version_0"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    cli = configured(ClassifierModule, list(args))
    assert type(cli.model.fusion).__name__ == "ToySumFusion" and cli.model.fusion.scale == 2.0
    assert describe_run(cli.config)[0] == "multimodal-toy_sum-mlp-ce-s0"

    # compare, by the registered name
    out = tmp_path / "compare"
    run_grid(
        base=[str(CONFIGS / "demo.yaml")],
        fusions=["toy_sum", "concat"],
        heads=["mlp"],
        seeds=[0],
        overrides=[*overrides, "--trainer.max_epochs=1"],
        out_dir=out,
    )
    board = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert {row["fusion"] for row in board} == {"toy_sum", "concat"}
    assert (out / "cells" / "toy_sum-mlp-s0" / "result.json").is_file()

    # explain the fitted model
    ids = [row["image_id"] for row in csv.DictReader((tmp_path / "data" / "metadata.csv").open())][:1]
    figures = tmp_path / "explained"
    main(["explain", *args, f"--ckpt_path={best}", "--ids", *ids, f"--out_dir={figures}"])
    assert [p.name for p in figures.iterdir()] == [f"{ids[0]}.png"]
