"""The package's floors (issue 18): every import, lazy ones and type-only ones included, goes
down the floors or stays on its own, never up; and the pieces that must load without torch do."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "neuroplastic"

#: lowest first; a module may import its own floor and the floors below it
FLOORS = [
    {
        "errors",
        "io",
        "extras",
        "progress",
        "distributed",
        "run_format",
        "settings",
        "arms",
        "choices",
        "recovery",
        "run_identity",
        "config",
        "facts_config",
        "presets",
    },
    {"data"},
    {"core"},
    {"store"},
    {"analysis"},
    {"experiment"},
    {"report"},
    {"api", "cli", "__init__"},
]


def floor_of(parts: tuple[str, ...]) -> int:
    """The floor of the module ``neuroplastic.<parts>`` (its first component decides)."""
    head = parts[0] if parts else "__init__"
    for index, names in enumerate(FLOORS):
        if head in names:
            return index
    raise AssertionError(f"neuroplastic.{'.'.join(parts)} is on no floor: add it to FLOORS")


def imported_modules(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """Every ``neuroplastic...`` module ``path`` imports, anywhere in the file, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "neuroplastic":  # from neuroplastic import x: x is the module
                found += [(node.lineno, (alias.name,)) for alias in node.names]
            elif node.module.startswith("neuroplastic."):
                found.append((node.lineno, tuple(node.module.split(".")[1:])))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("neuroplastic."):
                    found.append((node.lineno, tuple(alias.name.split(".")[1:])))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_floor_map_is_checked_against_a_planted_upward_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from neuroplastic.report.views import show\n")
    ((line, target),) = imported_modules(planted)
    assert (line, target) == (2, ("report", "views"))
    assert floor_of(target) > floor_of(("core", "stats"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_floor_above_its_own(path):
    own = path.relative_to(PACKAGE).with_suffix("").parts
    if own[-1] in ("__init__", "__main__") and len(own) > 1:
        own = own[:-1]
    upward = [
        f"line {line}: neuroplastic.{'.'.join(target)}"
        for line, target in imported_modules(path)
        if floor_of(target) > floor_of(own)
    ]
    assert not upward, f"{path.relative_to(PACKAGE)} imports a floor above its own: {upward}"


def test_the_sweep_report_and_the_package_load_without_torch():
    code = (
        "import sys\n"
        "import neuroplastic, neuroplastic.report.sweep_report, neuroplastic.analysis.intervals\n"
        "import neuroplastic.experiment.sweep_plan, neuroplastic.analysis.predictor_labels\n"
        "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_public_api_is_importable_from_the_package():
    import importlib

    import neuroplastic

    for name, module in neuroplastic._PUBLIC.items():
        assert getattr(neuroplastic, name) is getattr(importlib.import_module(module), name)
    from neuroplastic import ExperimentConfig, ablate  # the spelling a notebook uses

    assert ablate.__module__ == "neuroplastic.core.ablation"
    assert ExperimentConfig.__module__ == "neuroplastic.config"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        neuroplastic.nothing  # noqa: B018


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``neuroplastic.<...>`` of the file ``path`` under the package directory ``root``."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> every package module it imports, anywhere in the file (lazy, type-only):
    ``from neuroplastic.a import b`` is an edge to ``neuroplastic.a.b`` where that is a
    module, else to ``neuroplastic.a``."""
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    inner = f"{node.module}.{alias.name}"
                    targets.add(inner if inner in files else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module: its import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_a_planted_lazy_and_type_only_cycle(tmp_path):
    package = tmp_path / "neuroplastic"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("def f():\n    from neuroplastic.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from neuroplastic.c import C\n"
    )
    (package / "c.py").write_text("import neuroplastic.sub.a\n")
    graph = import_graph(package)
    assert graph["neuroplastic.sub.a"] == {"neuroplastic.sub.b"}
    assert import_cycles(graph) == [["neuroplastic.c", "neuroplastic.sub.a", "neuroplastic.sub.b"]]


def test_no_import_cycles_lazy_and_type_only_imports_included():
    cycles = import_cycles(import_graph())
    assert not cycles, f"import cycles among neuroplastic's modules: {cycles}"
