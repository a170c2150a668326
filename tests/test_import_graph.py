"""The direction of imports: one shared core that the app, the trainer and the converter import, and that
imports none of them; no import cycles. Reads the source (every import statement, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("haruhi_tui", "trainer", "convert")

#: Which layers each layer may import (a layer imports itself freely).
ALLOWED = {
    "haruhi_tui.core": set(),
    "haruhi_tui.store": {"haruhi_tui.core"},
    "haruhi_tui.services": {"haruhi_tui.core", "haruhi_tui.store"},
    "haruhi_tui.app": {"haruhi_tui.core", "haruhi_tui.store", "haruhi_tui.services"},
    "haruhi_tui.cli": {"haruhi_tui.core", "haruhi_tui.store", "haruhi_tui.services"},
    "haruhi_tui": set(),  # the package's own __init__
    "trainer": {"haruhi_tui.core"},
    "convert": {"haruhi_tui.core"},
}
#: The few public entry points one layer may use of another it does not build on: the ``haruhi`` command
#: registers the trainer's commands, and the launcher fills the same config the trainer reads (TRL's
#: config <-> trainer pair: the config half is public); jobs themselves start through the command line.
PUBLIC = {
    "haruhi_tui.cli": {"trainer.cli", "trainer.eval_cli"},
    "haruhi_tui.services": {"trainer.train_config"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module of ours that ``path`` imports, relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {target})  # `from pkg import module` imports the module, not pkg
    return {m for m in found if m.split(".")[0] in PACKAGES}


def source_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def graph() -> dict[str, set[str]]:
    files = source_files()
    return {mod: {m for m in imports_of(path, set(files)) if m in files and m != mod} for mod, path in files.items()}


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in sorted(graph().items()):
        layer = layer_of(module)
        for target in sorted(targets):
            other = layer_of(target)
            if other == layer or other in ALLOWED[layer] or target in PUBLIC.get(layer, ()):
                continue
            wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_source_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"files over 500 lines: {long}"
