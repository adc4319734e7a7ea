"""The README's Python examples run as written, and the configs it names exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_example_runs(index: int) -> None:
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(python_blocks()[index], f"README.md example {index}", "exec"), namespace)


def test_named_config_files_exist() -> None:
    named = set(re.findall(r"configs/[\w/]+\.yaml", README.read_text()))
    assert named, "the README names no config"
    missing = sorted(p for p in named if not (README.parent / p).is_file())
    assert not missing


def test_top_level_api_resolves() -> None:
    import medfusion

    for name in medfusion.__all__:
        assert getattr(medfusion, name) is not None
    with pytest.raises(AttributeError):
        _ = medfusion.not_a_thing
