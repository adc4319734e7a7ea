"""Every shipped config parses through the real CLI parser, alone or as a fragment on a demo config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medfusion.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
BASES = ["demo.yaml", "demo_image.yaml", "demo_text.yaml"]
FRAGMENTS = sorted(p.relative_to(CONFIGS).as_posix() for d in CONFIGS.iterdir() if d.is_dir() for p in d.glob("*.yaml"))
# trainer/ holds sub-configs named by the bases; sweeps/ holds W&B sweep definitions (tested below); compare/ holds
# medfusion compare grids and their multimodal base fragment (tested in test_compare.py).
FRAGMENTS = [f for f in FRAGMENTS if not f.startswith(("trainer/", "sweeps/", "compare/"))]
SWEEPS = sorted(p.name for p in (CONFIGS / "sweeps").glob("*.yaml"))


def print_config(configs: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(f"--config={CONFIGS / c}" for c in configs), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def assert_subset(wanted, resolved, where: str) -> None:
    """Every value of ``wanted`` is in ``resolved`` (which also holds the defaults the fragment left out)."""
    if isinstance(wanted, dict):
        for key, value in wanted.items():
            assert key in resolved, f"{where}.{key} missing"
            assert_subset(value, resolved[key], f"{where}.{key}")
    elif isinstance(wanted, list):
        assert len(wanted) == len(resolved), where
        for i, (value, got) in enumerate(zip(wanted, resolved, strict=True)):
            assert_subset(value, got, f"{where}[{i}]")
    else:
        assert wanted == resolved, where


@pytest.mark.parametrize("base", BASES)
def test_demo_config_parses(base: str, capsys) -> None:
    config = print_config([base], capsys)
    assert config["model"]["class_path"].startswith("medfusion.models.")
    assert config["trainer"]["logger"]["init_args"]["name"] == "demo"


@pytest.mark.parametrize("fragment", FRAGMENTS)
def test_fragment_parses_on_the_demo(fragment: str, capsys) -> None:
    """The fragment's values survive the merge into the resolved config."""
    config = print_config(["demo.yaml", fragment], capsys)
    wanted = yaml.safe_load((CONFIGS / fragment).read_text())
    for section, values in wanted.items():
        if "init_args" not in values:  # a forced callback's or the trainer's own options
            assert_subset(values, config[section], f"{fragment}: {section}")
            continue
        for key, value in values["init_args"].items():
            resolved = config[section]["init_args"][key]
            if isinstance(value, dict) and "class_path" in value:
                assert resolved["class_path"] == value["class_path"]
                for arg, arg_value in (value.get("init_args") or {}).items():
                    assert resolved["init_args"][arg] == arg_value, (fragment, key, arg)
            else:
                assert resolved == value, (fragment, key)


def sweep_runs(sweep: dict) -> list[list[str]]:
    """The argument lists a W&B agent would run: each value of each parameter (others at their first value),
    formatted as ``--name=value`` in place of ``${args}``."""
    params = sweep["parameters"]
    runs = []
    for name, spec in params.items():
        for value in spec["values"]:
            chosen = {k: (value if k == name else v["values"][0]) for k, v in params.items()}
            args = [f"--{k}={v}" for k, v in chosen.items()]
            runs.append([a for part in sweep["command"][1:] for a in (args if part == "${args}" else [part])])
    return runs


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_runs_parse(name: str, capsys, monkeypatch) -> None:
    """Every run of the sweep parses through the CLI and its value reaches the resolved config."""
    sweep = yaml.safe_load((CONFIGS / "sweeps" / name).read_text())
    assert sweep["program"] == "medfusion" and sweep["command"][0] == "${program}"
    assert sweep["metric"]["name"] in ("val/macro_f1", "val/balanced_acc")
    monkeypatch.chdir(CONFIGS.parent)  # the sweep's paths are relative to the repository root
    for argv in sweep_runs(sweep):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--print_config"])
        assert exit_info.value.code in (0, None), argv
        config = yaml.safe_load(capsys.readouterr().out)
        for arg in argv:
            key, _, value = arg.removeprefix("--").partition("=")
            if key == "config" or not value:
                continue
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == yaml.safe_load(value), (name, arg)
        fragments = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        for fragment in fragments:  # fusion/head sweeps: the fragment's class reached the model
            wanted = yaml.safe_load((CONFIGS.parent / fragment).read_text())["model"]["init_args"]
            for key, value in wanted.items():
                assert config["model"]["init_args"][key]["class_path"] == value["class_path"], (name, fragment)
