"""docs/internals.md cannot drift from the code: its method table must list exactly
the control methods the agent serves, with the params the strict param table
accepts, and its message-number ranges must be the wire registry's."""

from __future__ import annotations

import re
from pathlib import Path

from agent import wire
from agent.control.server import BUILTIN_METHODS
from agent.runtime.handlers import METHOD_PARAMS

INTERNALS = Path(__file__).resolve().parents[2] / "docs" / "internals.md"


def _table_rows(header: str) -> list[list[str]]:
    """The rows of the first markdown table whose header row starts with ``header``."""
    lines = INTERNALS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _documented_methods() -> dict[str, set[str]]:
    """method -> the param names its row lists."""
    out: dict[str, set[str]] = {}
    for cells in _table_rows("| method |"):
        names = re.findall(r"`([a-z._]+)`", cells[0])
        params = set(re.findall(r"([a-z_]+)\??(?=[:,}])", cells[1]))
        for name in names:
            out[name] = params
    return out


def test_the_method_table_lists_exactly_the_methods_served() -> None:
    documented = set(_documented_methods())
    served = set(METHOD_PARAMS) | set(BUILTIN_METHODS)
    assert documented - served == set(), "documented but not served"
    assert served - documented == set(), "served but not in docs/internals.md §4"


def test_each_documented_method_lists_the_params_it_accepts() -> None:
    documented = _documented_methods()
    for method, schema in METHOD_PARAMS.items():
        missing = set(schema) - documented[method]
        assert not missing, f"{method}: params {sorted(missing)} accepted but not documented"


def test_the_message_ranges_are_the_wire_registry() -> None:
    documented = {}
    for cells in _table_rows("| range"):
        lo, hi = (int(x) for x in re.split("[\u2013-]", cells[0]))
        documented[(lo, hi)] = cells[1]
    assert set(documented) == set(wire.MSG_RANGES.values())
    for module, span in wire.MSG_RANGES.items():
        path = module.replace("agent.", "agent/").replace(".", "/") + ".py"
        owner = documented[span]
        assert path in owner or (module == "agent.wire" and "wire.py" in owner) or (
            "PBFT" in owner and "pbft" in module
        ), f"{span}: docs say {owner!r}, the registry says {module}"
