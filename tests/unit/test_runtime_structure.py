"""The runtime's shape, checked from the source so later work keeps to it (issue 12):

* no import cycle between ``agent/runtime/`` modules -- the import graph of
  ``agent/`` is read with ``ast``, imports inside functions and under
  ``TYPE_CHECKING`` included (a cycle hidden that way is still a cycle);
* ruff's SLF001 (private member access) is on for ``agent/`` and the code is
  clean under it: no component reaches through another's internals.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"
RUNTIME = "agent.runtime"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def agent_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(AGENT.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every ``agent`` module ``path`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import x`` mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = agent_modules()
    known = set(modules)
    return {name: set(imported_modules(name, path, known)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_hidden_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from agent.runtime import views\n"
        "if TYPE_CHECKING:\n"
        "    from agent.runtime.agent import Agent\n"
        "def later():\n"
        "    import agent.runtime.tasks.nothing\n"
    )
    path = tmp_path / "x.py"
    path.write_text(source)
    known = {"agent.runtime.views", "agent.runtime.agent", "agent.runtime.tasks", "agent.runtime"}
    assert set(imported_modules("agent.runtime.x", path, known)) == {
        "agent.runtime.views", "agent.runtime.agent", "agent.runtime.tasks"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_runtime_modules() -> None:
    graph = import_graph()
    assert graph.get("agent.runtime.agent")  # the reader found the imports
    runtime_cycles = [c for c in cycles(graph) if any(m.startswith(RUNTIME) for m in c)]
    assert not runtime_cycles, "import cycles through agent/runtime/: " + "; ".join(
        " <-> ".join(c) for c in runtime_cycles)


def test_private_member_access_is_checked_in_agent_and_clean() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lint = config["tool"]["ruff"]["lint"]
    assert "SLF001" in lint["select"]
    for pattern, codes in lint.get("per-file-ignores", {}).items():
        if "SLF001" in codes:  # exceptions name files, never the whole of agent/
            assert pattern.startswith("!agent/") or pattern.startswith("agent/raft/"), pattern
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "SLF001", "--output-format", "concise",
         "agent"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
