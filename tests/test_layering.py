"""The tree reads top to bottom (README, "Files"): main.py and cli.py ->
handlers/ -> responder/ -> config/, and localapi/ apart. Checked on the
source, imports inside functions included, so a cycle cannot hide in a lazy
import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "handlers", "responder", "localapi")
# What each layer may import of the project (besides itself).
ALLOWED = {
    "config": set(),
    "responder": {"config"},
    "handlers": {"responder", "config"},
    "localapi": set(),
}


def _modules() -> dict[str, Path]:
    files = [*ROOT.glob("*.py"), *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))]
    out = {}
    for path in files:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports, anywhere in its source."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {  # imports under ``if TYPE_CHECKING:`` never run
        id(inner) for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            subs = [f"{module}.{alias.name}" for alias in node.names]
            found.update(subs)
            if not all(s in MODULES for s in subs):
                found.add(module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if name.split(".")[0] in ALLOWED
        and target.split(".")[0] != name.split(".")[0]
        and target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    )
    assert wrong == []


def test_config_stands_on_its_own() -> None:
    config = {n: sorted(t) for n, t in GRAPH.items() if n.startswith("config") and t}
    assert config == {}, "config/ imports nothing of the project, nor do its modules import each other"


def test_there_is_no_import_cycle_between_project_modules() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_the_check_sees_imports() -> None:
    """The checks above are not vacuous: known edges are found."""
    assert "responder.planner" in GRAPH["responder.service"]
    assert "config.settings" in GRAPH["handlers.runtime"]
    assert "handlers.detectors" in GRAPH["handlers.log_sink"]
