"""The house rules of DESIGN.md, checked on the source: each layer imports only the layers below it, the plain
module packages (encoders, fusion, heads, losses) import none of each other, and no sub-packages import each
other in a cycle. Every ``import`` statement counts, also those inside functions."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medfusion"

# DESIGN.md's layers, bottom first; top-level modules are placed with the package they belong to.
LAYERS: dict[str, int] = {
    "runs": 0,
    "registry": 0,
    "data": 1,
    "evaluation": 2,
    "metrics": 2,
    "encoders": 3,
    "fusion": 3,
    "heads": 3,
    "losses": 3,
    "tta": 3,
    "models": 4,
    "callbacks": 4,
    "interpret": 4,
    "deploy": 4,
    "cli": 5,
    "compare": 5,
    "export": 5,
    "__init__": 6,
    "__main__": 6,
}
# Plain nn.Module packages: usable alone, so none imports another.
PLAIN = {"encoders", "fusion", "heads", "losses", "tta"}


def unit_of(module: str) -> str:
    """``medfusion.data.table`` -> ``data``; ``medfusion.compare`` -> ``compare``; ``medfusion`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The ``medfusion`` modules a file imports (absolute imports; the package uses no relative ones)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("medfusion"))
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module and node.module.startswith("medfusion"):
                found.add(node.module)
    return found


GRAPH = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module) for module in GRAPH} | {unit_of(i) for imported in GRAPH.values() for i in imported}
    assert units <= set(LAYERS), f"place {sorted(units - set(LAYERS))} in LAYERS (DESIGN.md)"


def upward_imports(module: str, imported: set[str]) -> list[str]:
    """What ``module`` imports against the layer rules: a unit of a higher layer, or another plain package."""
    unit, found = unit_of(module), []
    for other_module in sorted(imported):
        other = unit_of(other_module)
        if other == unit:
            continue
        if LAYERS[other] > LAYERS[unit]:
            found.append(f"{module} ({unit}, layer {LAYERS[unit]}) imports {other_module} (layer {LAYERS[other]})")
        elif unit in PLAIN and other in PLAIN:
            found.append(f"{module} imports {other_module}: the plain module packages stay independent")
    return found


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_point_down(module: str) -> None:
    assert upward_imports(module, GRAPH[module]) == []


def test_the_rules_the_issue_names() -> None:
    data = {i for m, imported in GRAPH.items() if unit_of(m) == "data" for i in imported}
    assert not {i for i in data if unit_of(i) in {"models", "encoders", "fusion", "heads", "losses"}}
    encoders = {i for m, imported in GRAPH.items() if unit_of(m) == "encoders" for i in imported}
    assert not {i for i in encoders if unit_of(i) == "data"}
    for package in ("fusion", "heads"):
        used = {unit_of(i) for m, imported in GRAPH.items() if unit_of(m) == package for i in imported}
        assert not used & {"models", "data"}, f"{package} imports {used & {'models', 'data'}}"


def test_no_import_cycle_between_units() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imported in GRAPH.items():
        for other in imported:
            if unit_of(other) != unit_of(module):
                edges[unit_of(module)].add(unit_of(other))
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for nxt in sorted(edges[unit]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, unit, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, unit])
        state[unit] = 2

    for unit in sorted(edges):
        if unit not in state:
            visit(unit, [])


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rules are not vacuous: an import inside a function counts, and upward or sideways imports are found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from medfusion.models import ClassifierModule\n")
    assert imports_of(bad) == {"medfusion.models"}
    assert upward_imports("medfusion.data.bad", imports_of(bad)) == [
        "medfusion.data.bad (data, layer 1) imports medfusion.models (layer 4)"
    ]
    assert len(upward_imports("medfusion.fusion.bad", {"medfusion.heads"})) == 1
    assert upward_imports("medfusion.models.ok", {"medfusion.data", "medfusion.models.base"}) == []
