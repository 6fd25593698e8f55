"""The design's rules, checked on the source: the layers (docs/design.md) and no import cycle.

Imports are read with `ast` from every module under src/narcissus, those inside functions and
under `if TYPE_CHECKING:` included: a cycle through a lazy import is still a cycle to a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "narcissus"
CAPABILITIES = ("diagnose", "prevent", "repro", "quantify", "fleet")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> the narcissus modules it imports (resolved to modules, not attributes)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for imported in targets:
                target = imported
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("narcissus") and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_core_imports_only_the_core_and_errors() -> None:
    for module, targets in _imports().items():
        if _layer(module) != "core":
            continue
        outside = sorted(
            t for t in targets if _layer(t) not in ("core", "errors") and t != "narcissus"
        )
        assert not outside, f"{module} imports {outside}"


def test_only_the_system_package_names_an_os_module() -> None:
    for module, targets in _imports().items():
        if _layer(module) == "system":
            continue
        reached = sorted(t for t in targets if t.startswith("narcissus.system."))
        assert not reached, f"{module} reaches past narcissus.system into {reached}"


def test_capabilities_never_import_the_command_line() -> None:
    for module, targets in _imports().items():
        if _layer(module) in (*CAPABILITIES, "core", "system"):
            cli = sorted(t for t in targets if _layer(t) == "cli")
            assert not cli, f"{module} imports {cli}"


def test_there_is_no_import_cycle_between_files() -> None:
    graph = _imports()
    # A package's __init__ that only re-exports is entered by every `from pkg.sub import x`;
    # treat an import of `pkg` from within `pkg` as no edge (Python imports the parent first).
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
