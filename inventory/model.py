"""The inventory as declared: groups, hosts, variables, each with where it came from.

Both file formats fill an ``InventoryBuilder``; ``finish()`` applies Ansible's
implicit structure (every top-level group is a child of ``all``; a host in no
group but ``all`` is in ``ungrouped``), rejects cycles in ``children`` and
returns the declarations.  ``inventory.loader`` turns declarations into resolved
``Host`` records with Ansible's variable precedence:

    all  <  parent group  <  child group  <  host

Groups at the same depth merge by ``ansible_group_priority`` then by name (the
later one wins), exactly as Ansible sorts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inventory.errors import InventoryError


@dataclass(frozen=True, slots=True)
class Origin:
    """Where something was declared (1-based line; 0 when synthesised)."""

    path: str
    line: int

    def error(self, reason: str) -> InventoryError:
        return InventoryError(self.path, self.line or None, reason)


@dataclass(slots=True)
class GroupDecl:
    name: str
    origin: Origin
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    var_origins: dict[str, Origin] = field(default_factory=dict)
    defined: bool = False
    """False while the group is only named by a ``[x:vars]``/``[x:children]`` section."""


@dataclass(slots=True)
class HostDecl:
    name: str
    origin: Origin
    vars: dict[str, Any] = field(default_factory=dict)
    var_origins: dict[str, Origin] = field(default_factory=dict)


@dataclass(slots=True)
class Declarations:
    """The finished, checked declarations of one inventory."""

    path: str
    groups: dict[str, GroupDecl]
    hosts: dict[str, HostDecl]
    parents: dict[str, list[str]]
    """group → its direct parent groups."""
    depth: dict[str, int]
    """group → longest distance from ``all`` (``all`` is 0)."""
    host_groups: dict[str, list[str]]
    """host → every group it belongs to, directly or through children, with ``all``."""


def _valid_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() for c in name) and name[0] not in "!&~"


class InventoryBuilder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.groups: dict[str, GroupDecl] = {}
        self.hosts: dict[str, HostDecl] = {}
        self.edges: dict[tuple[str, str], Origin] = {}
        """(parent, child) → where the child was listed, to point at a cycle."""
        synth = Origin(path, 0)
        for implicit in ("all", "ungrouped"):
            self.groups[implicit] = GroupDecl(implicit, synth, defined=True)

    def group(self, name: str, origin: Origin, *, define: bool = True) -> GroupDecl:
        if not _valid_name(name) or ":" in name or "," in name:
            raise origin.error(f"invalid group name {name!r}")
        if name in self.hosts:
            raise origin.error(f"{name!r} is already a host; a group cannot share its name")
        decl = self.groups.get(name)
        if decl is None:
            decl = self.groups[name] = GroupDecl(name, origin)
        if define and not decl.defined:
            decl.defined = True
            decl.origin = origin
        return decl

    def host(self, name: str, origin: Origin, group: str) -> HostDecl:
        if not _valid_name(name) or "," in name:
            raise origin.error(f"invalid host name {name!r}")
        if name in self.groups:
            raise origin.error(f"{name!r} is already a group; a host cannot share its name")
        decl = self.hosts.get(name)
        if decl is None:
            decl = self.hosts[name] = HostDecl(name, origin)
        members = self.groups[group].hosts
        if name not in members:
            members.append(name)
        return decl

    def child(self, parent: str, child: str, origin: Origin) -> None:
        if parent == child:
            raise origin.error(f"group {parent!r} cannot be its own child")
        self.group(child, origin, define=True)
        children = self.groups[parent].children
        if child not in children:
            children.append(child)
            self.edges[(parent, child)] = origin

    @staticmethod
    def set_var(target: GroupDecl | HostDecl, key: Any, value: Any, origin: Origin, what: str) -> None:
        if not isinstance(key, str) or not key.isidentifier():
            raise origin.error(f"invalid variable name {key!r} in {what}")
        target.vars[key] = value
        target.var_origins[key] = origin

    def finish(self) -> Declarations:
        for decl in self.groups.values():
            if not decl.defined:
                raise decl.origin.error(f"section refers to undefined group {decl.name!r}")
        all_group, ungrouped = self.groups["all"], self.groups["ungrouped"]
        parents: dict[str, list[str]] = {name: [] for name in self.groups}
        for decl in self.groups.values():
            for child in decl.children:
                if child == "all":
                    origin = self.edges.get((decl.name, child), decl.origin)
                    raise origin.error(f"group 'all' cannot be a child of {decl.name!r}")
                parents[child].append(decl.name)
        for name, ps in parents.items():
            if name != "all" and not ps:
                all_group.children.append(name)
                ps.append("all")
        depth = self._depths(parents)
        host_groups: dict[str, list[str]] = {}
        for host in self.hosts:
            direct = [g.name for g in self.groups.values() if host in g.hosts and g.name != "all"]
            if not direct and host not in ungrouped.hosts:
                ungrouped.hosts.append(host)
                direct = ["ungrouped"]
            seen: list[str] = []
            stack = list(direct)
            while stack:
                group = stack.pop()
                if group not in seen:
                    seen.append(group)
                    stack.extend(parents[group])
            if "all" not in seen:
                seen.append("all")
            order = {name: i for i, name in enumerate(self.groups)}
            host_groups[host] = sorted(seen, key=order.__getitem__)
        return Declarations(self.path, self.groups, self.hosts, parents, depth, host_groups)

    def _depths(self, parents: dict[str, list[str]]) -> dict[str, int]:
        """Longest path from ``all``; a cycle in ``children`` is an error at the closing edge."""
        done: set[str] = set()
        visiting: set[str] = set()

        def check(name: str) -> None:
            visiting.add(name)
            for child in self.groups[name].children:
                if child in visiting:
                    origin = self.edges.get((name, child), self.groups[child].origin)
                    raise origin.error(
                        f"group {child!r} is its own ancestor (cycle in children via {name!r})"
                    )
                if child not in done:
                    check(child)
            visiting.discard(name)
            done.add(name)

        for name in self.groups:
            if name not in done:
                check(name)
        depth: dict[str, int] = {}

        def visit(name: str) -> int:
            if name not in depth:
                depth[name] = 0 if name == "all" else 1 + max(visit(p) for p in parents[name])
            return depth[name]

        for name in self.groups:
            visit(name)
        return depth


def merged_vars(decls: Declarations, host: str) -> dict[str, tuple[Any, Origin]]:
    """The host's variables with Ansible's precedence; each value keeps its origin."""

    def priority(group: str) -> int:
        raw = decls.groups[group].vars.get("ansible_group_priority", 1)
        try:
            return int(raw)
        except (TypeError, ValueError):
            origin = decls.groups[group].var_origins["ansible_group_priority"]
            raise origin.error(f"ansible_group_priority must be an integer, got {raw!r}") from None

    ordered = sorted(decls.host_groups[host], key=lambda g: (decls.depth[g], priority(g), g))
    result: dict[str, tuple[Any, Origin]] = {}
    for group in ordered:
        decl = decls.groups[group]
        for key, value in decl.vars.items():
            result[key] = (value, decl.var_origins[key])
    hdecl = decls.hosts[host]
    for key, value in hdecl.vars.items():
        result[key] = (value, hdecl.var_origins[key])
    return result
