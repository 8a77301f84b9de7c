"""Load an Ansible inventory file (YAML or INI) into resolved hosts.

The format comes from the extension (``.yml``/``.yaml``/``.json`` → YAML,
``.ini``/``.cfg`` → INI); without one, a file that parses as a YAML mapping of
groups is YAML and anything else is INI.  ``group_vars/`` and ``host_vars/``
next to the file are read as Ansible does (``NAME``, ``NAME.yml``,
``NAME.yaml``, ``NAME.json`` or a directory ``NAME/`` of such files) and
override the variables written inline in the inventory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inventory.errors import InventoryError
from inventory.hostvars import Host, resolve_host
from inventory.ini_format import parse_ini_inventory
from inventory.marked_yaml import MarkedDict, load_marked_yaml, plain
from inventory.model import Declarations, GroupDecl, HostDecl, InventoryBuilder, Origin, merged_vars
from inventory.patterns import PatternError, select_hosts
from inventory.yaml_format import parse_yaml_inventory

_YAML_SUFFIXES = {".yml", ".yaml", ".json"}
_INI_SUFFIXES = {".ini", ".cfg", ".hosts"}


@dataclass(frozen=True, slots=True)
class Inventory:
    """A loaded inventory: every host resolved, groups expanded to their hosts."""

    path: str
    hosts: dict[str, Host]
    """Every host by name, in declaration order."""
    groups: dict[str, tuple[str, ...]]
    """Every group → every host in it, through children too."""

    def host(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            raise InventoryError(self.path, None, f"no host {name!r} in the inventory")
        return host

    def select(self, limit: str | None) -> list[Host]:
        """The hosts a ``--limit`` pattern denotes (``None``: all)."""
        try:
            names = select_hosts(limit, list(self.hosts), self.groups)
        except PatternError as exc:
            raise InventoryError(self.path, None, f"--limit {limit!r}: {exc}") from None
        return [self.hosts[n] for n in names]

    @property
    def default_key_path(self) -> str:
        """Where a generated cluster key is kept: ``<inventory>.key``, mode 0600."""
        return self.path + ".key"


def load_inventory(path: str | os.PathLike[str], defaults: dict[str, Any] | None = None) -> Inventory:
    """Parse and resolve ``path``; ``defaults`` are variables below every group's
    (the command line's ``-b``/``--become-user``/``--become-method``: as in
    Ansible, a host or group that sets the variable wins)."""
    file = Path(path)
    shown = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(shown, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(shown, None, f"cannot read: {exc}") from None
    builder = InventoryBuilder(shown)
    if _is_yaml(file, text, shown):
        parse_yaml_inventory(text, shown, builder)
    else:
        parse_ini_inventory(text, shown, builder)
    decls = builder.finish()
    _read_vars_dirs(file.parent, decls)
    hosts = {
        name: resolve_host(
            name,
            tuple(decls.host_groups[name]),
            _with_defaults(merged_vars(decls, name), defaults),
            decls.hosts[name].origin,
        )
        for name in decls.hosts
    }
    groups = {group: tuple(h for h in decls.hosts if group in decls.host_groups[h]) for group in decls.groups}
    return Inventory(shown, hosts, groups)


def _with_defaults(
    merged: dict[str, tuple[Any, Origin]], defaults: dict[str, Any] | None
) -> dict[str, tuple[Any, Origin]]:
    if not defaults:
        return merged
    origin = Origin("<command line>", 0)
    return {**{key: (value, origin) for key, value in defaults.items()}, **merged}


def _is_yaml(file: Path, text: str, shown: str) -> bool:
    suffix = file.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        return True
    if suffix in _INI_SUFFIXES:
        return False
    try:
        data = load_marked_yaml(text, shown)
    except InventoryError:
        return False
    return isinstance(data, MarkedDict) and all(v is None or isinstance(v, MarkedDict) for v in data.values())


def _vars_files(base: Path, name: str) -> list[Path]:
    found: list[Path] = []
    for suffix in ("", ".yml", ".yaml", ".json"):
        candidate = base / f"{name}{suffix}"
        if candidate.is_file():
            found.append(candidate)
    directory = base / name
    if directory.is_dir():
        found.extend(
            sorted(
                p for p in directory.iterdir() if p.is_file() and p.suffix in ("", ".yml", ".yaml", ".json")
            )
        )
    return found


def _read_vars_dirs(root: Path, decls: Declarations) -> None:
    targets: list[tuple[str, dict[str, GroupDecl] | dict[str, HostDecl]]] = [
        ("group_vars", decls.groups),
        ("host_vars", decls.hosts),
    ]
    for dirname, table in targets:
        base = root / dirname
        if not base.is_dir():
            continue
        for name, decl in table.items():
            for file in _vars_files(base, name):
                shown = str(file)
                try:
                    text = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise InventoryError(shown, None, f"cannot read: {exc}") from None
                data = load_marked_yaml(text, shown)
                if data is None:
                    continue
                if not isinstance(data, MarkedDict):
                    raise InventoryError(shown, 1, "a vars file must be a mapping")
                for key, value in data.items():
                    InventoryBuilder.set_var(decl, key, plain(value), Origin(shown, data.line_of(key)), shown)
