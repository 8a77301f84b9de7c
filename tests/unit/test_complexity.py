"""No function in agent/ above cyclomatic complexity 20, as radon measures it
(issue 12): later work keeps to it."""

from __future__ import annotations

from pathlib import Path

from radon.complexity import cc_visit
from radon.visitors import Function

AGENT = Path(__file__).resolve().parents[2] / "agent"
LIMIT = 20


def test_the_measure_sees_methods() -> None:
    body = "".join(f"        if x == {i}: return {i}\n" for i in range(25))
    code = "class A:\n    def f(self, x):\n" + body
    assert [(b.fullname, b.complexity) for b in cc_visit(code) if isinstance(b, Function)] == [("A.f", 26)]


def test_no_function_in_agent_is_above_complexity_20() -> None:
    too_complex = []
    for path in sorted(AGENT.rglob("*.py")):
        for block in cc_visit(path.read_text()):
            if isinstance(block, Function) and block.complexity > LIMIT:
                where = f"{path.relative_to(AGENT.parent)}:{block.lineno}"
                too_complex.append(f"{where} {block.fullname} ({block.complexity})")
    assert too_complex == [], "\n".join(too_complex)
