"""Ansible's YAML inventory format.

    all:
      vars: {mesh_cluster: lab}
      children:
        web:
          hosts:
            web[01:03]: {mesh_slots: 4}
          vars: {mesh_capabilities: [ssd]}

Every top-level key is a group.  A group is empty (``~``) or a mapping with
only ``hosts``, ``vars`` and ``children``; a host maps to its variables or is
empty.  Anything else is an error with its file and line.
"""

from __future__ import annotations

from typing import Any

from inventory.errors import InventoryError
from inventory.marked_yaml import MarkedDict, load_marked_yaml, plain
from inventory.model import InventoryBuilder, Origin
from inventory.ranges import RangeError, expand_host_range

GROUP_KEYS = ("hosts", "vars", "children")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def parse_yaml_inventory(text: str, path: str, builder: InventoryBuilder) -> None:
    data = load_marked_yaml(text, path)
    if data is None:
        return
    if not isinstance(data, MarkedDict):
        raise InventoryError(path, 1, f"an inventory must be a mapping of groups, not {_kind(data)}")
    if "plugin" in data:
        raise InventoryError(path, data.line_of("plugin"), "inventory plugins are not supported; list groups")
    for name, body in data.items():
        _parse_group(builder, path, str(name), body, data.line_of(name))


def _parse_group(builder: InventoryBuilder, path: str, name: str, body: Any, line: int) -> None:
    origin = Origin(path, line)
    group = builder.group(name, origin)
    if body is None:
        return
    if not isinstance(body, MarkedDict):
        raise origin.error(f"group {name!r} must be a mapping, not {_kind(body)}")
    for key in body:
        if key not in GROUP_KEYS:
            raise InventoryError(path, body.line_of(key), f"unknown key {key!r} in group {name!r}")
    for key, value in body.items():
        if value is None:
            continue
        key_line = body.line_of(key)
        if not isinstance(value, MarkedDict):
            raise InventoryError(
                path, key_line, f"{key!r} of group {name!r} must be a mapping, not {_kind(value)}"
            )
        if key == "hosts":
            for pattern, host_vars in value.items():
                _parse_hosts(builder, path, name, str(pattern), host_vars, value.line_of(pattern))
        elif key == "vars":
            for var, var_value in value.items():
                builder.set_var(
                    group,
                    var,
                    plain(var_value),
                    Origin(path, value.line_of(var)),
                    f"group {name!r}",
                )
        else:
            for child, child_body in value.items():
                child_line = value.line_of(child)
                builder.child(name, str(child), Origin(path, child_line))
                _parse_group(builder, path, str(child), child_body, child_line)


def _parse_hosts(
    builder: InventoryBuilder, path: str, group: str, pattern: str, host_vars: Any, line: int
) -> None:
    origin = Origin(path, line)
    if host_vars is not None and not isinstance(host_vars, MarkedDict):
        raise origin.error(f"host {pattern!r} must map to variables, not {_kind(host_vars)}")
    try:
        names = expand_host_range(pattern)
    except RangeError as exc:
        raise origin.error(str(exc)) from None
    for host_name in names:
        decl = builder.host(host_name, origin, group)
        if host_vars is not None:
            for key, value in host_vars.items():
                builder.set_var(
                    decl,
                    key,
                    plain(value),
                    Origin(path, host_vars.line_of(key)),
                    f"host {host_name!r}",
                )
