"""``medfusion compare``: the grid, its leaderboard statistics, resuming an interrupted grid, and the shipped
comparison configs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import demo_run_overrides

import medfusion.compare as compare
import medfusion.compare.cells as cells
from medfusion.cli import console, main
from medfusion.compare import compare_parser
from medfusion.fusion import FUSIONS
from medfusion.heads import HEADS

CONFIGS = Path(__file__).parents[1] / "configs"


def tiny_overrides(root: Path) -> list[str]:
    """The demo comparison at test scale: 60 samples at 32 px, a tiny CNN, 2 epochs, a private feature cache."""
    options = {"data__feature_cache": root / "features", "trainer__max_epochs": 2, "evaluation__embedding_map": "false"}
    return demo_run_overrides(root, num_samples=60, set_runs_dir=False, **options)


BASE = [str(CONFIGS / "demo.yaml"), str(CONFIGS / "compare" / "frozen_encoders.yaml")]


@pytest.mark.slow
def test_an_interrupted_grid_over_an_option_axis_reruns_only_its_unfinished_cells(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "compare"
    options = {"base": BASE, "fusions": ["concat", "gated"], "heads": ["mlp"], "seeds": [0, 1]}
    options |= {"axes": {"model.lr": [0.003, 0.01]}, "overrides": tiny_overrides(tmp_path), "out_dir": out}
    real_run_cell, ran = cells.run_cell, []

    def interrupted(cell, base, overrides, cell_dir, keep_checkpoints):
        if len(ran) == 2:  # the third cell dies half-way: its directory exists, its result.json does not
            (cell_dir / "checkpoints").mkdir(parents=True)
            raise KeyboardInterrupt
        ran.append(cell.name)
        return real_run_cell(cell, base, overrides, cell_dir, keep_checkpoints)

    monkeypatch.setattr(cells, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare.run_grid(**options)
    assert ran == ["concat-mlp-lr=0.003-s0", "concat-mlp-lr=0.003-s1"]
    finished = {name: (out / "cells" / name / "result.json").stat().st_mtime_ns for name in ran}
    assert not (out / "leaderboard.md").exists()

    def counted(cell, *args):
        ran.append(cell.name)
        return real_run_cell(cell, *args)

    monkeypatch.setattr(cells, "run_cell", counted)
    board = compare.run_grid(**options)
    assert ran[2:] == [
        f"{f}-mlp-lr={lr}-s{s}" for f, lr in (("concat", 0.01), ("gated", 0.003), ("gated", 0.01)) for s in (0, 1)
    ]
    assert {n: (out / "cells" / n / "result.json").stat().st_mtime_ns for n in finished} == finished

    results = pd.read_csv(out / "results.csv")
    assert len(results) == 8 and set(results["seed"]) == {0, 1} and set(results["model.lr"]) == {0.003, 0.01}
    assert results["macro_f1"].between(0, 1).all() and (results["fit_s"] > 0).all()
    assert results["train_macro_f1"].between(0, 1).all()  # the tested model on its training rows
    assert not list(out.glob("cells/**/*.ckpt"))  # the best weights stay in memory unless keep_checkpoints
    assert set(zip(board["fusion"], board["model.lr"], strict=True)) == {
        (f, lr) for f in ("concat", "gated") for lr in (0.003, 0.01)
    }
    assert (board["seeds"] == 2).all() and list(board["rank"]) == [1, 2, 3, 4]
    assert board["macro_f1_mean"].is_monotonic_decreasing
    for _, row in board.iterrows():
        runs = results[(results["fusion"] == row["fusion"]) & (results["model.lr"] == row["model.lr"])]
        assert row["macro_f1_mean"] == pytest.approx(runs["macro_f1"].mean())
        assert row["macro_f1_ci_low"] <= row["macro_f1_mean"] <= row["macro_f1_ci_high"]
    # paired against the best on the same test cases: the best's own difference is 0, the others' below or at it
    best = board.iloc[0]
    assert best["macro_f1_diff"] == 0 and best["indistinguishable"]
    assert (board["macro_f1_diff"] <= 1e-12).all()
    assert (board["macro_f1_diff_low"] <= board["macro_f1_diff"]).all()
    # frozen encoders: only fusion + head (+ missing-modality stand-ins) are trained; gated has more than concat
    assert (board["trainable_params"] < board["params"] / 5).all()
    trainable = board.groupby("fusion")["trainable_params"].first()
    assert trainable["gated"] > trainable["concat"]
    for picture in ("leaderboard.png", "axes.png", "epochs.png"):
        assert (out / picture).stat().st_size > 0
    markdown = (out / "leaderboard.md").read_text()
    assert markdown.count("\n") == 6 and "| 1 |" in markdown and "| lr |" in markdown and "best" in markdown
    # image + text features of train, val and test per seed (the untrained encoders differ by seed), shared by fusions
    assert len(list((tmp_path / "features").iterdir())) == 2 * 3 * 2

    capsys.readouterr()
    compare.run_grid(**options, report_only=True)  # the report of the finished cells: nothing runs
    compare.run_grid(**options)  # everything finished: nothing runs
    assert len(ran) == 8
    report = (out / "report.md").read_text()
    assert "paired-bootstrap" in report and report.splitlines()[0] == "# Comparison: 8 cells, ranked by test macro_f1"
    assert "8 of 8 cells finished" in capsys.readouterr().out


@pytest.mark.slow
def test_a_cell_tests_the_same_best_epoch_with_or_without_checkpoint_files(tmp_path: Path) -> None:
    (cell,) = compare.build_cells(compare.make_axes({"fusion": ["gated"]}, None), [0])
    overrides = [*tiny_overrides(tmp_path), "--trainer.max_epochs=3"]
    in_memory = cells.run_cell(cell, BASE, overrides, tmp_path / "memory" / cell.name, keep_checkpoints=False)
    on_disk = cells.run_cell(cell, BASE, overrides, tmp_path / "disk" / cell.name, keep_checkpoints=True)
    assert not list((tmp_path / "memory").rglob("*.ckpt")) and list((tmp_path / "disk").rglob("best-*.ckpt"))
    assert in_memory["metrics"].keys() == on_disk["metrics"].keys()
    for key, value in on_disk["metrics"].items():
        assert in_memory["metrics"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_cells_run_two_at_a_time_give_the_results_of_one_at_a_time(tmp_path: Path) -> None:
    """``workers: 2`` (the shipped cached grids) trains each cell in a spawned process of its own: the same cells,
    the same test metrics (the same seeds) as the cells run one by one in this process."""
    options = {"base": BASE, "fusions": ["concat", "gated"], "heads": ["mlp"], "seeds": [0]}
    options["overrides"] = tiny_overrides(tmp_path)
    threads, own = max(1, (os.cpu_count() or 1) // 2), torch.get_num_threads()
    torch.set_num_threads(threads)  # as many as each of the two workers gets: the same sums
    try:
        compare.run_grid(**options, out_dir=tmp_path / "one", workers=1)
    finally:
        torch.set_num_threads(own)
    compare.run_grid(**options, out_dir=tmp_path / "two", workers=2)
    one, two = (pd.read_csv(tmp_path / d / "results.csv").set_index("name") for d in ("one", "two"))
    assert list(two.index) == list(one.index) == ["concat-mlp-s0", "gated-mlp-s0"]
    assert (two["threads"] == threads).all() and (one["threads"] == threads).all()
    metrics = ["macro_f1", "balanced_acc", "macro_auroc", "acc", "ece", "train_macro_f1"]
    assert (two[metrics] - one[metrics]).abs().max().max() < 1e-4


def test_a_bad_grid_is_shown_to_a_cli_user_as_itself(tmp_path: Path, capsys) -> None:
    argv = ["compare", "--base", f"[{CONFIGS / 'demo.yaml'}]", "--axes", '{"model.lr": [0.1, 0.1]}']
    with pytest.raises(SystemExit) as exit_info:
        console([*argv, "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds a value twice" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        console(["compare", "--base", f"[{CONFIGS / 'demo.yaml'}]", "--heads", "[mlp]", "--report", "true",
                 "--out_dir", str(tmp_path / "empty")])  # fmt: skip
    assert "no finished cell" in capsys.readouterr().err


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
    axes = compare.make_axes({"fusion": ["a", "b"], "head": ["mlp"], "loss": ["ce.yaml", "FocalLoss"]}, None)
    grid = compare.build_cells(axes, [0, 1])
    assert [c.name for c in grid[:3]] == ["a-mlp-ce-s0", "a-mlp-ce-s1", "a-mlp-FocalLoss-s0"]  # as before option axes
    compare.check_same_grid(tmp_path, ["a.yaml"], [])
    with pytest.raises(ValueError, match="another --out_dir"):
        compare.check_same_grid(tmp_path, ["b.yaml"], [])


def test_option_axes_name_their_cells_and_columns() -> None:
    axes = compare.make_axes(
        {"fusion": ["concat"], "head": None, "loss": None},
        {"model.lr": [0.001, 0.01], "model.head.init_args.hidden_dims": [[512, 256], [64]], "model.dropout": [0.1],
         "model.head.init_args.dropout": [0.0, 0.5], "model.freeze_encoders": [True, False]},
    )  # fmt: skip
    assert [a.short for a in axes] == [
        "fusion",
        "lr",
        "hidden_dims",
        "model.dropout",
        "head.dropout",
        "freeze_encoders",
    ]
    cells = compare.build_cells(axes, [3])
    assert len(cells) == 2 * 2 * 1 * 2 * 2
    first = cells[0]
    assert first.name == "concat-lr=0.001-hidden_dims=512x256-model.dropout=0.1-head.dropout=0-freeze_encoders=true-s3"
    assert first.columns() == {
        "fusion": "concat", "model.lr": 0.001, "model.head.init_args.hidden_dims": "512x256", "model.dropout": 0.1,
        "model.head.init_args.dropout": 0.0, "model.freeze_encoders": "true",
    }  # fmt: skip
    assert len({c.name for c in cells}) == len(cells)
    args = compare.cell_args(first, ["base.yaml"], ["--trainer.max_epochs=2"], Path("out/x"))
    assert args.index("--trainer.max_epochs=2") < args.index("--model.lr=0.001")  # the axis wins over an override
    assert "--model.head.init_args.hidden_dims=[512, 256]" in args and "--seed_everything=3" in args
    with pytest.raises(ValueError, match="twice"):
        compare.make_axes({}, {"model.lr": [0.1, 0.1]})
    with pytest.raises(ValueError, match="--fusions"):
        compare.make_axes({"fusion": ["concat"]}, {"model.init_args.fusion": ["gated"]})
    with pytest.raises(ValueError, match="--seeds"):
        compare.make_axes({}, {"seed_everything": [1, 2]})


def test_one_at_a_time_varies_each_axis_alone_around_the_base_point() -> None:
    axes = compare.make_axes(
        {}, {"model.lr": [1e-3, 3e-4, 3e-3], "data.batch_size": [32, 16, 64], "model.dropout": [0.1, 0.3]}
    )
    cells = compare.build_cells(axes, [0, 1], mode="one_at_a_time")
    configurations = list(dict.fromkeys(c.configuration for c in cells))
    assert len(configurations) == 1 + (3 - 1) + (3 - 1) + (2 - 1) and len(cells) == 2 * len(configurations)
    assert configurations[0] == "lr=0.001-batch_size=32-dropout=0.1"  # the base point: each axis' first value
    for config in configurations[1:]:  # every other one differs from the base point in exactly one axis
        assert sum(a != b for a, b in zip(config.split("-"), configurations[0].split("-"), strict=True)) == 1
    moved = compare.build_cells(axes, [0], mode="one_at_a_time", base_point={"data.batch_size": 16})
    assert moved[0].name == "lr=0.001-batch_size=16-dropout=0.1-s0" and len(moved) == 6
    with pytest.raises(ValueError, match="not one of the axis' values"):
        compare.build_cells(axes, [0], mode="one_at_a_time", base_point={"model.lr": 0.5})
    with pytest.raises(ValueError, match="names no axis"):
        compare.build_cells(axes, [0], mode="one_at_a_time", base_point={"model.wd": 0.5})


def option(config: dict, key: str) -> object:
    """The value at dotted ``key`` of a printed fit config (``model.lr`` is ``model.init_args.lr``)."""
    node: object = config
    for part in key.split("."):
        if part not in node and "init_args" in node:
            node = node["init_args"]
        node = node[part]
    return node


def printed_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_an_axis_on_any_option_sets_it_in_the_cells_resolved_config(tmp_path: Path, capsys) -> None:
    values = {
        "model.lr": 0.0123,
        "data.batch_size": 7,
        "model.head.init_args.hidden_dims": [48, 24],
        "model.image_encoder.init_args.model_name": "resnet34",
        "model.image_encoder.init_args.pretrained": True,
        "model.freeze_encoders": False,
        "data.image_size": 160,
        "data.train_fraction": 0.25,
    }
    axes = compare.make_axes(
        {}, {key: [value] for key, value in values.items()} | {"config": ["configs/loss/focal.yaml"]}
    )
    (cell,) = compare.build_cells(axes, [5])
    config = printed_config(compare.cell_args(cell, [str(CONFIGS / "demo.yaml")], [], tmp_path / cell.name), capsys)
    for key, value in values.items():
        assert option(config, key) == value, key
    assert config["model"]["init_args"]["loss"]["class_path"].endswith("FocalLoss")  # the fragment's setting
    assert config["seed_everything"] == 5


GRIDS = sorted(p.name for p in (CONFIGS / "compare").glob("*.yaml") if p.name != "frozen_encoders.yaml")


@pytest.mark.parametrize("name", GRIDS)
def test_every_value_of_a_shipped_comparison_parses(name: str, tmp_path: Path, capsys) -> None:
    args = compare_parser().parse_args(["--config", str(CONFIGS / "compare" / name)])
    axes = compare.make_axes({"fusion": args.fusions, "head": args.heads, "loss": args.losses}, args.axes)
    configurations = compare.build_cells(axes, [0], mode="one_at_a_time")  # every value of every axis once
    for cell in configurations:
        config = printed_config(compare.cell_args(cell, args.base, args.overrides, tmp_path / cell.name), capsys)
        init = config["model"]["init_args"]
        for axis, value in cell.settings:
            if axis.key == "fusion":
                assert init["fusion"]["class_path"].endswith(type_name(FUSIONS.get(compare.label(value))))
            elif axis.key == "head":
                assert init["head"]["class_path"].endswith(type_name(HEADS.get(value)))
            elif axis.key not in ("loss", "config"):
                assert option(config, axis.key) == value, (cell.name, axis.key)
        assert config["data"]["init_args"]["augment"] is False


def type_name(cls: type) -> str:
    return cls.__name__


def test_a_grid_worker_starts_its_loaders_workers_as_the_compare_process_does() -> None:
    """A spawned grid worker would spawn its DataLoader workers too (each importing torch anew, ~10 s a loader while
    a feature cache is computed); it takes the compare process's start method instead."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from medfusion.compare.grid import start_worker

    method = multiprocessing.get_start_method()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=start_worker, initargs=(1, method)) as pool:
        assert pool.submit(multiprocessing.get_start_method).result() == method
