"""Ansible's INI inventory format.

    host0 ansible_host=198.18.0.9         # before any section: ungrouped
    [web]
    web[01:03] mesh_slots=4
    db1:2222                              # host:port sets ansible_port
    [web:vars]
    mesh_capabilities=ssd,nvme
    [prod:children]
    web

Values are read as Ansible does: a Python literal when it is one (``4``,
``True``, ``['a', 'b']``), the text otherwise.  Lines starting with ``#`` or
``;`` are comments; host lines are split with shell quoting rules.
"""

from __future__ import annotations

import ast
import re
import shlex
from typing import Any

from inventory.model import InventoryBuilder, Origin
from inventory.ranges import RangeError, expand_host_range

_SECTION = re.compile(r"^\[([^\[\]]+)\]\s*(?:[#;].*)?$")
_HOST_PORT = re.compile(r"^(?P<name>[^:\[\]]+):(?P<port>\d+)$")


def parse_value(text: str) -> Any:
    """A Python literal if the text is one, else the text (Ansible's ``_parse_value``)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, int | float | bool | str | list | dict) or value is None:
        return value
    return text


def parse_ini_inventory(text: str, path: str, builder: InventoryBuilder) -> None:
    group, state = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        origin = Origin(path, number)
        section = _SECTION.match(line)
        if section is not None:
            group, _, kind = section.group(1).strip().partition(":")
            state = kind or "hosts"
            if state not in ("hosts", "vars", "children"):
                raise origin.error(
                    f"invalid section [{section.group(1)}]: the suffix must be :vars or :children"
                )
            builder.group(group, origin, define=state != "vars" or group in ("all", "ungrouped"))
            continue
        if line.startswith("["):
            raise origin.error(f"malformed section header {line!r}")
        if state == "hosts":
            _host_line(builder, group, line, origin)
        elif state == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise origin.error(f"expected key=value in [{group}:vars], got {line!r}")
            builder.set_var(
                builder.groups[group],
                key.strip(),
                parse_value(value.strip()),
                origin,
                f"group {group!r}",
            )
        else:
            child = line.split("#", 1)[0].split(";", 1)[0].strip()
            if len(child.split()) != 1:
                raise origin.error(f"expected one group name in [{group}:children], got {line!r}")
            builder.child(group, child, origin)


def _host_line(builder: InventoryBuilder, group: str, line: str, origin: Origin) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise origin.error(f"cannot split host line: {exc}") from None
    if not tokens:
        return
    pattern, assignments = tokens[0], tokens[1:]
    port: int | None = None
    host_port = _HOST_PORT.match(pattern)
    if host_port is not None:
        pattern, port = host_port.group("name"), int(host_port.group("port"))
    try:
        names = expand_host_range(pattern)
    except RangeError as exc:
        raise origin.error(str(exc)) from None
    parsed: list[tuple[str, Any]] = []
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise origin.error(f"expected key=value after host {pattern!r}, got {item!r}")
        parsed.append((key, parse_value(value)))
    if port is not None:
        parsed.insert(0, ("ansible_port", port))
    for name in names:
        decl = builder.host(name, origin, group)
        for key, value in parsed:
            builder.set_var(decl, key, value, origin, f"host {name!r}")
