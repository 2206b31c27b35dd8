"""The package layout is a rule on the code, not a picture: imports point one way and never go round in a circle.

Rooms of `lightning_t5/` and what each may import (docs/CONTRACTS.md "Rooms", ../shared/DESIGN.md): every import in
every module is read from the source (module level and inside functions alike; `if TYPE_CHECKING:` blocks are
annotations only and not counted), so a lazy import that climbs to a higher room fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "mixtures", "lightning_t5")
LIGHTNING = ("pytorch_lightning", "lightning_fabric", "lightning", "torchmetrics")

# room -> rooms (and top-level packages) it may import besides itself and third-party libraries
ALLOWED: dict[str, set[str]] = {
    "tasks": set(),
    "mixtures": {"tasks"},
    "errors": set(),
    "model": set(),
    "dist": {"errors", "model", "mixtures", "tasks"},
    "eval": {"errors", "model", "tasks"},
    "train": {"errors", "model", "dist", "eval", "mixtures", "tasks"},
    "experiments": {"errors", "model", "dist", "eval", "train", "mixtures", "tasks"},
    "commands": {"errors", "model", "dist", "eval", "train", "experiments", "mixtures", "tasks"},
}
ROOMS = ("model", "dist", "eval", "train", "experiments")
COMMANDS = ("lightning_t5.export", "lightning_t5.evaluate")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[_module_name(path)] = path
    return out


MODULES = _modules()


def room(module: str) -> str:
    """The room a project module belongs to (`tasks`, `mixtures`, a `lightning_t5/` room, or `commands`)."""
    parts = module.split(".")
    if parts[0] != "lightning_t5":
        return parts[0]
    if len(parts) == 1 or module in COMMANDS:
        return "commands"
    if parts[1] == "errors":
        return "errors"
    if parts[1] in ROOMS:
        return parts[1]
    raise AssertionError(f"{module} is in no room: put it in one of {ROOMS} (or make it a command)")


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement of `module`, resolved to the deepest project module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def _project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        edges[module] = {t for t, _ in imports_of(module) if t.split(".")[0] in PACKAGES and t in MODULES}
    return edges


def test_every_module_is_in_a_room():
    for module in MODULES:
        room(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    mine = room(module)
    for target, line in imports_of(module):
        top = target.split(".")[0]
        if top in LIGHTNING:
            assert mine not in ("model", "eval", "errors", "tasks", "mixtures"), (
                f"{module}:{line} imports {target}: the {mine} room must not import Lightning")
        if top not in PACKAGES:
            continue
        assert target != "lightning_t5" or mine == "commands", (
            f"{module}:{line} imports the package façade `lightning_t5`; import from the module that defines the name")
        theirs = room(target) if target in MODULES else top
        if theirs == mine:
            continue
        assert theirs in ALLOWED[mine], (
            f"{module}:{line} imports {target}: the {mine} room may import {sorted(ALLOWED[mine]) or 'nothing'} "
            f"of the project, not {theirs} (docs/CONTRACTS.md 'Rooms')")


def test_no_import_circles():
    edges = _project_edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                # a package's __init__ re-exporting its own submodules is not a circle of the code
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    raise AssertionError("import circle: " + " -> ".join(cycle))
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if state.get(module) is None:
            visit(module)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a model module that imports the training room is reported."""
    fake = ROOT / "lightning_t5" / "model" / "t5.py"
    monkeypatch.setitem(MODULES, "lightning_t5.model._probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text("def f():\n    from lightning_t5.train.fit import fit\n")
    assert fake.is_file()
    with pytest.raises(AssertionError, match="the model room may import nothing"):
        test_imports_point_one_way("lightning_t5.model._probe")
