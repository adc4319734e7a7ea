"""The README's Python examples run as written, and its commands and configs exist and parse."""

from __future__ import annotations

import re
import shlex
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from medfusion.cli import main
from medfusion.compare import compare_parser

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
CLI_COMMANDS = ("fit", "validate", "test", "predict")
EXTRA_COMMANDS = ("demo-data", "explain", "pack", "export")
COMPARE_COMMAND = "compare"  # parsed below; its grids' cells are parsed in test_compare.py
# A run directory's saved config: runs/<name>/version_N/config.yaml is the resolved configs/<name>.yaml.
RUN_CONFIG = re.compile(r"runs/(?P<name>[\w-]+)/version_\d+/config\.yaml")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def bash_commands() -> list[list[str]]:
    """Every ``medfusion <command> ...`` in the README's bash blocks, as argument lists after ``medfusion``:
    continuation lines joined, comments dropped, found after ``&&``, ``srun``, ``torchrun -m`` or ``VAR=value``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            tokens = shlex.split(line, comments=True)
            parts: list[list[str]] = [[]]
            for token in tokens:
                if token in ("&&", "||", ";", "|"):
                    parts.append([])
                else:
                    parts[-1].append(token)
            for part in parts:
                starts = [i for i, t in enumerate(part[:-1]) if Path(t).name == "medfusion"]
                if starts:
                    commands.append(part[starts[0] + 1 :])
    return commands


def command_id(argv: list[str]) -> str:
    return " ".join(argv)[:80]


COMMANDS = bash_commands()
UNIQUE_COMMANDS = list(dict.fromkeys(tuple(c) for c in COMMANDS))  # the README repeats some on purpose
CLI_LINES = [list(c) for c in UNIQUE_COMMANDS if c[0] in CLI_COMMANDS]
EXTRA_LINES = [list(c) for c in UNIQUE_COMMANDS if c[0] in EXTRA_COMMANDS]
COMPARE_LINES = [list(c) for c in UNIQUE_COMMANDS if c[0] == COMPARE_COMMAND]
NAMED_CONFIGS = sorted(set(re.findall(r"configs/[\w/]+\.yaml", README.read_text())))
_SAVED_RUN_CONFIGS: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch) -> None:
    """LightningCLI warns when it is given args while sys.argv holds pytest's own."""
    monkeypatch.setattr(sys, "argv", ["medfusion"])


def print_config(argv: list[str], capsys) -> dict:
    """``medfusion <argv> --print_config`` in this process: exits 0 and prints a YAML config."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"medfusion {' '.join(argv)} --print_config failed:\n{err[-3000:]}"
    return yaml.safe_load(out)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_example_runs(index: int) -> None:
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(python_blocks()[index], f"README.md example {index}", "exec"), namespace)


def test_named_config_files_exist() -> None:
    assert NAMED_CONFIGS, "the README names no config"
    missing = [p for p in NAMED_CONFIGS if not (ROOT / p).is_file()]
    assert not missing


def test_readme_commands_are_found() -> None:
    """The extraction sees the README's commands (so the tests below cannot pass by finding none)."""
    found = {c[0] for c in COMMANDS}
    assert set(CLI_COMMANDS) | set(EXTRA_COMMANDS) <= found
    assert len(CLI_LINES) >= 10
    unknown = [c for c in COMMANDS if c[0] not in (*CLI_COMMANDS, *EXTRA_COMMANDS, COMPARE_COMMAND)]
    assert not unknown, f"README commands this test does not know how to check: {unknown}"
    assert ["fit", "--config", "configs/demo.yaml"] in COMMANDS  # the Quickstart, after `pip install ... &&`


@pytest.mark.parametrize("argv", CLI_LINES, ids=command_id)
def test_cli_command_parses(argv: list[str], capsys, monkeypatch, tmp_path_factory) -> None:
    """Each ``medfusion fit|validate|test|predict`` line parses with ``--print_config`` as written, from the
    repository root. Parsing opens no data, checkpoint or hub model, so the study configs and ``--ckpt_path``
    of a run that does not exist here parse too; a run's saved ``config.yaml`` is stood in for by the
    resolved config it was saved from."""
    monkeypatch.chdir(ROOT)
    args = list(argv)
    for i, arg in enumerate(args):
        if match := RUN_CONFIG.fullmatch(arg):
            name = match["name"]
            if name not in _SAVED_RUN_CONFIGS:
                source = ROOT / "configs" / f"{name}.yaml"
                assert source.is_file(), f"{arg}: no configs/{name}.yaml it could come from"
                saved = tmp_path_factory.mktemp(name) / "config.yaml"
                saved.write_text(yaml.safe_dump(print_config(["fit", "--config", str(source)], capsys)))
                _SAVED_RUN_CONFIGS[name] = saved
            args[i] = str(_SAVED_RUN_CONFIGS[name])
        elif arg.endswith(".yaml"):
            assert (ROOT / arg).is_file(), f"{arg} named by `medfusion {' '.join(argv)}` does not exist"
    config = print_config(args, capsys)
    assert config["model"]["class_path"].startswith("medfusion.models.")
    assert config["data"]["class_path"].startswith("medfusion.data.")
    for option, value in pairwise(args):  # plain overrides reach the resolved config
        if option.startswith(("--trainer.", "--data.", "--model.")) and "[" not in value and value != "...":
            node = config
            for key in option.removeprefix("--").split("."):
                node = node[key] if key in node else node["init_args"][key]
            if not isinstance(node, dict):
                assert node in (yaml.safe_load(value), value), option  # devices "4" stays a string


def config_rounds() -> list[list[str]]:
    """Argument lists that parse every config the README names and no command line above parses: complete
    configs alone; trainer sub-configs as the demo's trainer; fragments on the demo config, one fragment per
    directory in each call (the directories set different keys, so none hides another's values). Sweeps are W&B
    definitions, tested in test_configs."""
    parsed = {a for c in CLI_LINES for a in c if a.endswith(".yaml")}
    complete = [p for p in NAMED_CONFIGS if p.count("/") == 1 and p not in parsed]
    by_dir: dict[str, list[str]] = {}
    for path in NAMED_CONFIGS:
        directory = path.split("/")[1]
        if path.count("/") >= 2 and directory not in ("sweeps", "trainer", "compare") and path not in parsed:
            by_dir.setdefault(directory, []).append(path)
    rounds = [["fit", "--config", path] for path in complete]
    trainers = [p for p in NAMED_CONFIGS if p.startswith("configs/trainer/") and p not in parsed]
    rounds += [["fit", "--config", "configs/demo.yaml", "--trainer", path] for path in trainers]
    for k in range(max(map(len, by_dir.values()), default=0)):
        fragments = [paths[k] for paths in by_dir.values() if k < len(paths)]
        rounds.append(["fit", "--config", "configs/demo.yaml", *(a for f in fragments for a in ("--config", f))])
    return rounds


def test_named_configs_parse(capsys, monkeypatch) -> None:
    """Every config the README names parses; the fragments' classes reach the resolved config."""
    monkeypatch.chdir(ROOT)
    assert {"configs/ham10000.yaml", "configs/spine.yaml"} <= set(NAMED_CONFIGS)
    covered = set()
    for argv in config_rounds():
        config = print_config(argv, capsys)
        fragments = [a for a in argv[1:] if a.endswith(".yaml")][1:]
        for fragment in fragments:
            wanted = (yaml.safe_load((ROOT / fragment).read_text()).get("model") or {}).get("init_args") or {}
            for key, value in wanted.items():
                if isinstance(value, dict) and "class_path" in value:
                    assert config["model"]["init_args"][key]["class_path"] == value["class_path"], fragment
        covered.update(a for a in argv if a.endswith(".yaml"))
    commands = {a for c in CLI_LINES for a in c if a.endswith(".yaml")}
    separate = ("configs/sweeps/", "configs/compare/")  # W&B sweeps and compare grids: tested in their own files
    missing = [p for p in NAMED_CONFIGS if p not in covered | commands and not p.startswith(separate)]
    assert not missing


@pytest.mark.parametrize("argv", EXTRA_LINES, ids=command_id)
def test_extra_command_help(argv: list[str], capsys) -> None:
    """``demo-data``, ``explain`` and ``pack`` need data or a checkpoint: their ``--help`` works and names every option
    the README line uses."""
    named = [a for a in argv if a.endswith(".yaml")]
    assert all((ROOT / a).is_file() for a in named), named
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([argv[0], "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in (a.strip("[]") for a in argv if a.strip("[]").startswith("--")):
        assert option in help_text, f"medfusion {argv[0]} --help does not mention {option}"


def test_study_configs_leave_the_leak_out() -> None:
    """HAM10000: split by lesion, no dx_type in the text; both studies name pretrained encoders whose tokenizer
    the data uses."""
    for name in ("ham10000", "spine"):
        config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        model, data = config["model"]["init_args"], config["data"]["init_args"]
        text = model["text_encoder"]["init_args"]
        assert text["pretrained"] and data["tokenizer"] == text["model_name"], name
        assert model["image_encoder"]["init_args"]["pretrained"], name
        assert data["image_size"] == 224 and data["group_column"], name
    ham = yaml.safe_load((ROOT / "configs" / "ham10000.yaml").read_text())["data"]["init_args"]
    assert ham["group_column"] == "lesion_id" and "dx_type" not in ham["text_template"]


def test_top_level_api_resolves() -> None:
    import medfusion

    for name in medfusion.__all__:
        assert getattr(medfusion, name) is not None
    with pytest.raises(AttributeError):
        _ = medfusion.not_a_thing


@pytest.mark.parametrize("argv", COMPARE_LINES, ids=command_id)
def test_compare_commands_parse(argv: list[str], monkeypatch) -> None:
    """Each ``medfusion compare`` line parses; its grid's base configs exist (every cell's config is parsed in
    test_compare.py)."""
    monkeypatch.chdir(ROOT)
    args = compare_parser().parse_args(argv[1:])
    assert (args.fusions or args.heads or args.axes) and args.seeds  # something varies
    assert all((ROOT / base).is_file() for base in args.base), args.base
