"""``medfusion compare``: the grid, its leaderboard statistics, resuming an interrupted grid, and the shipped
comparison configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import demo_run_overrides

import medfusion.compare as compare
from medfusion.cli import main
from medfusion.compare import compare_parser

CONFIGS = Path(__file__).parents[1] / "configs"


def tiny_overrides(root: Path) -> list[str]:
    """The demo comparison at test scale: 60 samples at 32 px, a tiny CNN, 2 epochs, a private feature cache."""
    options = {"data__feature_cache": root / "features", "trainer__max_epochs": 2, "evaluation__embedding_map": "false"}
    return demo_run_overrides(root, num_samples=60, set_runs_dir=False, **options)


BASE = [str(CONFIGS / "demo.yaml"), str(CONFIGS / "compare" / "frozen_encoders.yaml")]


@pytest.mark.slow
def test_an_interrupted_grid_reruns_only_its_unfinished_cells(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "compare"
    options = {"base": BASE, "fusions": ["concat", "gated"], "heads": ["mlp"], "seeds": [0, 1]}
    options |= {"overrides": tiny_overrides(tmp_path), "out_dir": out}
    real_run_cell, ran = compare.run_cell, []

    def interrupted(cell, base, overrides, cell_dir, keep_checkpoints):
        if len(ran) == 2:  # the third cell dies half-way: its directory exists, its result.json does not
            (cell_dir / "checkpoints").mkdir(parents=True)
            raise KeyboardInterrupt
        ran.append(cell.name)
        return real_run_cell(cell, base, overrides, cell_dir, keep_checkpoints)

    monkeypatch.setattr(compare, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare.run_grid(**options)
    assert ran == ["concat-mlp-s0", "concat-mlp-s1"]
    finished = {name: (out / "cells" / name / "result.json").stat().st_mtime_ns for name in ran}
    assert not (out / "leaderboard.md").exists()

    def counted(cell, *args):
        ran.append(cell.name)
        return real_run_cell(cell, *args)

    monkeypatch.setattr(compare, "run_cell", counted)
    board = compare.run_grid(**options)
    assert ran[2:] == ["gated-mlp-s0", "gated-mlp-s1"]  # only the unfinished cells ran again
    assert {n: (out / "cells" / n / "result.json").stat().st_mtime_ns for n in finished} == finished

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["seed"]) == {0, 1}
    assert results["macro_f1"].between(0, 1).all() and (results["fit_s"] > 0).all()
    assert not list(out.glob("cells/*/**/*.ckpt"))  # checkpoints removed unless keep_checkpoints
    assert list(board["fusion"]) != [] and set(board["fusion"]) == {"concat", "gated"}
    assert (board["seeds"] == 2).all() and list(board["rank"]) == [1, 2]
    assert board["macro_f1_mean"].is_monotonic_decreasing
    for _, row in board.iterrows():
        runs = results[results["fusion"] == row["fusion"]]
        assert row["macro_f1_mean"] == pytest.approx(runs["macro_f1"].mean())
        assert row["macro_f1_ci_low"] <= row["macro_f1_mean"] <= row["macro_f1_ci_high"]
    # frozen encoders: only fusion + head (+ missing-modality stand-ins) are trained; gated has more than concat
    assert (board["trainable_params"] < board["params"] / 5).all()
    trainable = board.set_index("fusion")["trainable_params"]
    assert trainable["gated"] > trainable["concat"]
    assert (out / "leaderboard.png").stat().st_size > 0
    markdown = (out / "leaderboard.md").read_text()
    assert markdown.count("\n") == 4 and "| 1 |" in markdown
    # image + text features of train, val and test per seed (the untrained encoders differ by seed), shared by fusions
    assert len(list((tmp_path / "features").iterdir())) == 2 * 3 * 2

    monkeypatch.setattr(compare, "run_cell", counted)
    compare.run_grid(**options)  # everything finished: nothing runs
    assert len(ran) == 4


def test_the_leaderboard_reports_the_t_interval_over_seeds() -> None:
    table = pd.DataFrame(
        {
            "fusion": ["concat"] * 3 + ["gated"] * 3 + ["mul"],
            "head": ["mlp"] * 7,
            "loss": [None] * 7,
            "seed": [0, 1, 2, 0, 1, 2, 0],
            "macro_f1": [0.80, 0.82, 0.84, 0.90, 0.91, 0.92, 0.95],
            "ece": [0.05, 0.06, 0.07, 0.02, 0.02, 0.02, 0.01],
            "params": [1000] * 7,
            "trainable_params": [100] * 7,
            "fit_s": [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 5.0],
        }
    )
    board = compare.leaderboard(table, metrics=["macro_f1", "ece"])
    assert list(board["fusion"]) == ["mul", "gated", "concat"]  # by mean macro-F1, best first
    concat = board.set_index("fusion").loc["concat"]
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) * std / sqrt(n)
    assert concat["macro_f1_mean"] == pytest.approx(0.82)
    assert concat["macro_f1_std"] == pytest.approx(0.02)
    assert (concat["macro_f1_ci_low"], concat["macro_f1_ci_high"]) == pytest.approx((0.82 - half, 0.82 + half))
    assert concat["fit_s"] == pytest.approx(2.0) and concat["seeds"] == 3
    single = board.set_index("fusion").loc["mul"]  # one seed: no spread, no interval
    assert math.isnan(single["macro_f1_std"]) and math.isnan(single["macro_f1_ci_low"])
    assert list(compare.leaderboard(table, metric="ece", metrics=["ece"])["fusion"]) == ["mul", "gated", "concat"]
    assert compare.mean_interval(pd.Series([0.99, 0.2, 1.0]))[2:] == (0.0, 1.0)  # clipped to the metric's range
    table_md = compare.markdown(board, metrics=["macro_f1"])
    assert f"0.820 ± 0.020 [{0.82 - half:.3f}, {0.82 + half:.3f}]" in table_md
    assert "| 1 | mul | mlp | 0.950 |" in table_md


def test_grid_items_resolve_or_fail_with_the_choices(tmp_path: Path) -> None:
    assert compare.item_args("fusion", "gated") == [
        "--model.init_args.fusion",
        json.dumps({"class_path": "medfusion.fusion.gated.GatedFusion"}),
    ]
    assert json.loads(compare.item_args("loss", "FocalLoss")[1]) == {"class_path": "medfusion.losses.FocalLoss"}
    assert compare.item_args("head", "configs/head/kan.yaml") == ["--config", "configs/head/kan.yaml"]
    with pytest.raises(KeyError, match="co_attention"):
        compare.item_args("fusion", "attention")
    with pytest.raises(FileNotFoundError, match=r"nothere\.yaml"):
        compare.item_args("head", "nothere.yaml")
    cells = compare.grid(["a", "b"], ["mlp"], ["ce.yaml", "FocalLoss"], [0, 1])
    assert [c.name for c in cells[:3]] == ["a-mlp-ce-s0", "a-mlp-ce-s1", "a-mlp-FocalLoss-s0"]
    compare.check_same_grid(tmp_path, ["a.yaml"], [])
    with pytest.raises(ValueError, match="another --out_dir"):
        compare.check_same_grid(tmp_path, ["b.yaml"], [])


GRIDS = sorted(p.name for p in (CONFIGS / "compare").glob("*.yaml") if p.name != "frozen_encoders.yaml")


@pytest.mark.parametrize("name", GRIDS)
def test_every_cell_of_a_shipped_comparison_parses(name: str, tmp_path: Path, capsys) -> None:
    spec = yaml.safe_load((CONFIGS / "compare" / name).read_text())
    args = compare_parser().parse_args(["--config", str(CONFIGS / "compare" / name)])
    assert args.fusions == spec["fusions"] and args.heads == spec["heads"]
    for fusion, head in [*((f, args.heads[0]) for f in args.fusions), *((args.fusions[0], h) for h in args.heads)]:
        cell = compare.Cell(fusion, head, None, 0)
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *compare.cell_args(cell, args.base, args.overrides, tmp_path / cell.name), "--print_config"])
        assert exit_info.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        init = config["model"]["init_args"]
        assert init["fusion"]["class_path"].endswith(type_name(compare.FUSIONS.get(compare.label(fusion))))
        assert init["head"]["class_path"].endswith(type_name(compare.HEADS.get(head)))
        assert init["freeze_encoders"] is True and config["data"]["init_args"]["augment"] is False


def type_name(cls: type) -> str:
    return cls.__name__
