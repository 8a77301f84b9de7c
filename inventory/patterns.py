"""Ansible host patterns, as given to ``--limit``.

A pattern is a list of terms separated by ``,`` (or by ``:`` when there is no
comma).  A term is ``all`` or ``*``, a group or host name, a glob
(``web*``), a regex (``~web0[12]``), optionally with a subscript
(``web[0]``, ``web[1:]``, ``web[-1]``; the end is inclusive, as in Ansible).
``&term`` intersects, ``!term`` excludes.  Plain terms are unioned first, then
intersections, then exclusions; a pattern with only ``&``/``!`` terms starts
from ``all``.  A term that names no group and no host is an error: a typo in
``--limit`` must not silently deploy to nothing (or everything).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

_SUBSCRIPT = re.compile(r"^(?P<base>.+?)\[(?:(?P<index>-?\d+)|(?P<start>-?\d*):(?P<end>-?\d*))\]$")


class PatternError(ValueError):
    """An unknown or malformed term; the message is the reason."""


def split_pattern(pattern: str) -> list[str]:
    if "," in pattern:
        parts = pattern.split(",")
    else:
        parts, depth, current = [], 0, ""
        for char in pattern:
            if char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            if char == ":" and depth == 0:
                parts.append(current)
                current = ""
            else:
                current += char
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def select_hosts(
    pattern: str | None,
    hosts: Sequence[str],
    groups: Mapping[str, Sequence[str]],
) -> list[str]:
    """Host names matching ``pattern`` in inventory order.

    ``hosts`` is every host in declaration order; ``groups`` maps each group to
    every host in it (children included).  ``None`` or empty means ``all``.
    """
    terms = split_pattern(pattern or "all")
    if not terms:
        raise PatternError("empty host pattern")
    plain = [t for t in terms if t[0] not in "&!"]
    intersect = [t[1:] for t in terms if t[0] == "&"]
    exclude = [t[1:] for t in terms if t[0] == "!"]
    if not plain:
        plain = ["all"]
    chosen: set[str] = set()
    for term in plain:
        chosen |= set(_match_term(term, hosts, groups))
    for term in intersect:
        chosen &= set(_match_term(term, hosts, groups))
    for term in exclude:
        chosen -= set(_match_term(term, hosts, groups))
    return [h for h in hosts if h in chosen]


def _match_term(term: str, hosts: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    if not term:
        raise PatternError("empty term in host pattern")
    subscript = _SUBSCRIPT.match(term)
    if subscript is not None and not term.startswith("~"):
        try:
            matched = _match_base(subscript.group("base"), hosts, groups)
        except PatternError:
            # ``web0[13]`` is also a glob character class: try that before giving up.
            return _match_base(term, hosts, groups)
        index = subscript.group("index")
        if index is not None:
            i = int(index)
            if not -len(matched) <= i < len(matched):
                raise PatternError(f"subscript {term!r} is out of range ({len(matched)} hosts)")
            return [matched[i]]
        start = int(subscript.group("start") or 0)
        end_text = subscript.group("end")
        end = int(end_text) if end_text else len(matched) - 1
        if end < 0:
            end += len(matched)
        return matched[start : end + 1]
    return _match_base(term, hosts, groups)


def _match_base(term: str, hosts: Sequence[str], groups: Mapping[str, Sequence[str]]) -> list[str]:
    if term in ("all", "*"):
        return list(hosts)
    if term.startswith("~"):
        try:
            regex = re.compile(term[1:])
        except re.error as exc:
            raise PatternError(f"bad regex in pattern {term!r}: {exc}") from None

        def match(name: str) -> bool:
            return regex.search(name) is not None
    elif any(c in term for c in "*?["):

        def match(name: str) -> bool:
            return fnmatch.fnmatchcase(name, term)
    else:

        def match(name: str) -> bool:
            return name == term

    found_name = False
    result: list[str] = []
    for group, members in groups.items():
        if match(group):
            found_name = True
            result.extend(h for h in members if h not in result)
    for host in hosts:
        if match(host):
            found_name = True
            if host not in result:
                result.append(host)
    if not found_name:
        raise PatternError(f"no group or host matches {term!r}")
    order = {h: i for i, h in enumerate(hosts)}
    return sorted(result, key=order.__getitem__)
