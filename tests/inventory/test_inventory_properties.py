"""Property tests: YAML and INI renderings of one inventory agree; pattern algebra holds."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from inventory import load_inventory
from inventory.loader import Inventory

VALUES = st.one_of(st.integers(-1000, 1000), st.from_regex(r"x[a-z0-9]{0,6}", fullmatch=True))
VAR_NAMES = st.sampled_from(["v0", "v1", "v2", "mesh_cluster_tag"])


@dataclass
class Shape:
    groups: list[str]
    children: dict[str, list[str]]  # edges only from a lower to a higher index: no cycles
    members: dict[str, list[str]]  # group -> hosts
    hosts: list[str]
    group_vars: dict[str, dict[str, object]]
    host_vars: dict[str, dict[str, object]]


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    n_groups = draw(st.integers(1, 5))
    groups = [f"g{i}" for i in range(n_groups)]
    children = {
        g: [groups[j] for j in range(i + 1, n_groups) if draw(st.booleans()) and draw(st.booleans())]
        for i, g in enumerate(groups)
    }
    hosts = [f"h{i}" for i in range(draw(st.integers(1, 6)))]
    members = {g: [h for h in hosts if draw(st.booleans())] for g in groups}
    group_vars = {g: draw(st.dictionaries(VAR_NAMES, VALUES, max_size=3)) for g in groups}
    host_vars = {h: draw(st.dictionaries(VAR_NAMES, VALUES, max_size=2)) for h in hosts}
    return Shape(groups, children, members, hosts, group_vars, host_vars)


def _yaml_value(value: object) -> str:
    return str(value)


def render_yaml(shape: Shape) -> str:
    lines = ["all:", "  hosts:"]
    for h in shape.hosts:  # declared first so every host exists (and order is fixed)
        lines.append(f"    {h}:")
        for key, value in shape.host_vars[h].items():
            lines.append(f"      {key}: {_yaml_value(value)}")
    lines.append("  children:")
    for g in shape.groups:
        lines.append(f"    {g}:")
        if shape.members[g]:
            lines.append("      hosts:")
            lines += [f"        {h}:" for h in shape.members[g]]
        if shape.group_vars[g]:
            lines.append("      vars:")
            for key, value in shape.group_vars[g].items():
                lines.append(f"        {key}: {_yaml_value(value)}")
        if shape.children[g]:
            lines.append("      children:")
            lines += [f"        {c}:" for c in shape.children[g]]
    return "\n".join(lines) + "\n"


def render_ini(shape: Shape) -> str:
    lines = []
    for h in shape.hosts:
        lines.append(" ".join([h, *(f"{k}={v}" for k, v in shape.host_vars[h].items())]))
    for g in shape.groups:
        lines.append(f"[{g}]")
        lines += shape.members[g]
        if shape.group_vars[g]:
            lines.append(f"[{g}:vars]")
            lines += [f"{k}={v}" for k, v in shape.group_vars[g].items()]
        if shape.children[g]:
            lines.append(f"[{g}:children]")
            lines += shape.children[g]
    return "\n".join(lines) + "\n"


def load_text(text: str, suffix: str) -> Inventory:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"inv{suffix}"
        path.write_text(text)
        return load_inventory(path)


@settings(max_examples=40, deadline=None)
@given(shapes())
def test_yaml_and_ini_renderings_agree(shape: Shape) -> None:
    a = load_text(render_yaml(shape), ".yml")
    b = load_text(render_ini(shape), ".ini")
    assert list(a.hosts) == list(b.hosts) == shape.hosts
    for name in shape.hosts:
        ha, hb = a.hosts[name], b.hosts[name]
        assert set(ha.groups) - {"ungrouped"} == set(hb.groups) - {"ungrouped"}
        assert ha.vars == hb.vars
        # a host's own vars always win
        for key, value in shape.host_vars[name].items():
            assert ha.vars[key] == value
    for g in shape.groups:
        assert set(a.groups[g]) == set(b.groups[g])


def _names(inv: Inventory, pattern: str) -> set[str]:
    return {h.name for h in inv.select(pattern)}


@settings(max_examples=40, deadline=None)
@given(shapes(), st.data())
def test_pattern_algebra(shape: Shape, data: st.DataObject) -> None:
    inv = load_text(render_yaml(shape), ".yml")
    terms = st.sampled_from([*shape.groups, *shape.hosts, "all", "g*", "h[01]"])
    x, y = data.draw(terms), data.draw(terms)
    sx, sy = _names(inv, x), _names(inv, y)
    assert _names(inv, f"{x}:{y}") == sx | sy
    assert _names(inv, f"{x},{y}") == sx | sy
    assert _names(inv, f"{x}:&{y}") == sx & sy
    assert _names(inv, f"{x}:!{y}") == sx - sy
    assert _names(inv, f"!{y}") == set(shape.hosts) - sy
    order = [h.name for h in inv.select(f"{x}:{y}")]
    assert order == [h for h in shape.hosts if h in sx | sy]  # inventory order
