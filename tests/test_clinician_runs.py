"""The clinician-like modalities in the run machinery: a lesion crop (from boxes or the model's saliency), 2.5D
slice stacks and whole studies resume exactly, test under DDP as in one process, and go through ``compare``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_cli import DDP, read_metrics, run_cli

import medfusion.compare as compare
from medfusion.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
CONFIGS = Path(__file__).parents[1] / "configs"
SMALL = ["--data.batch_size=8", "--data.num_workers=0", "--model.image_encoder.model_name=test_resnet",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip
DEMOS = {
    "crop": ["demo_global_local.yaml", "--data.num_samples=48", "--data.demo_image_size=128", "--data.image_size=32"],
    "saliency": [
        "demo_global_local.yaml",
        "--data.num_samples=48",
        "--data.demo_image_size=128",
        "--data.image_size=128",
        "--data.crops={}",
        "--data.modalities=[image]",
        "--model.saliency_crop={name: local, source: image, global_size: 32}",
    ],
    "slices": ["demo_25d.yaml", "--data.num_samples=40", "--data.demo_image_size=32", "--data.image_size=32"],
    "studies": ["demo_study.yaml", "--data.num_studies=40", "--data.demo_image_size=32", "--data.image_size=32"],
}


def demo_args(name: str, root: Path) -> list[str]:
    config, *options = DEMOS[name]
    return ["--config", str(CONFIGS / config), f"--data.root={root / 'data'}", *options, *SMALL]


@pytest.mark.parametrize("name", list(DEMOS))
def test_a_fit_that_dies_mid_epoch_resumes_to_the_uninterrupted_metrics(name: str, tmp_path: Path) -> None:
    args = [*demo_args(name, tmp_path), "--trainer.max_epochs=2"]
    main(["fit", *args, f"--trainer.logger.init_args.save_dir={tmp_path / 'whole'}"])
    parts = [*args, f"--trainer.logger.init_args.save_dir={tmp_path / 'parts'}"]
    with pytest.raises(RuntimeError, match="stopped at step 6"):  # in the second epoch (4-5 steps each)
        main(["fit", *parts, "--trainer.callbacks+=killpoint.FailAt", "--trainer.callbacks.step=6"])
    main(["fit", *parts, "--ckpt_path=last"])
    whole = read_metrics(tmp_path / "whole" / "demo" / "version_0")
    assert "test/macro_f1" in whole
    resumed = read_metrics(tmp_path / "parts" / "demo" / "version_0")  # resumed in place
    assert resumed == pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("name", ["saliency", "studies"])
def test_ddp_test_metrics_equal_one_process(name: str, tmp_path: Path) -> None:
    """Two CPU ranks, each its share of the test cases (studies: whole studies), gathered: one process's metrics."""
    args = demo_args(name, tmp_path)
    main(["fit", *args, "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    best = str(next((tmp_path / "runs" / "demo" / "version_0" / "checkpoints").glob("best-*.ckpt")))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    main(["test", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={single}"])
    run_cli(["test", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={ddp}", *DDP], tmp_path)
    expected = read_metrics(single / "demo" / "version_0")
    assert "test/macro_auroc" in expected
    assert read_metrics(ddp / "demo" / "version_0") == pytest.approx(expected, abs=1e-6)


def test_compare_runs_a_grid_over_a_crop_modality(tmp_path: Path) -> None:
    config, *options = DEMOS["crop"]
    overrides = [f"--data.root={tmp_path / 'data'}", *options, *SMALL, "--trainer.max_epochs=1"]
    board = compare.run_grid(base=[str(CONFIGS / config)], fusions=["concat", "gated"], heads=["mlp"], seeds=[0],
                             overrides=overrides, out_dir=tmp_path / "compare")  # fmt: skip
    results = pd.read_csv(tmp_path / "compare" / "results.csv")
    assert set(results["fusion"]) == {"concat", "gated"} and results["macro_f1"].between(0, 1).all()
    assert list(board["rank"]) == [1, 2]
