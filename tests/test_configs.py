"""Every shipped config parses through the real CLI parser, alone or as a fragment on a demo config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medfusion.cli import main

CONFIGS = Path(__file__).parents[1] / "configs"
BASES = ["demo.yaml", "demo_image.yaml", "demo_text.yaml"]
FRAGMENTS = sorted(p.relative_to(CONFIGS).as_posix() for d in CONFIGS.iterdir() if d.is_dir() for p in d.glob("*.yaml"))
FRAGMENTS = [f for f in FRAGMENTS if not f.startswith("trainer/")]  # sub-configs named by the bases


def print_config(configs: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(f"--config={CONFIGS / c}" for c in configs), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


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
        for key, value in values.get("init_args", {}).items():
            resolved = config[section]["init_args"][key]
            if isinstance(value, dict) and "class_path" in value:
                assert resolved["class_path"] == value["class_path"]
                for arg, arg_value in (value.get("init_args") or {}).items():
                    assert resolved["init_args"][arg] == arg_value, (fragment, key, arg)
            else:
                assert resolved == value, (fragment, key)
