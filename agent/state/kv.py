"""Namespaced key-value store of the state machine.

Keys are strings within a namespace; each entry keeps the log index that
created it and the one that last modified it (etcd's create/mod revisions), so
clients can read a value together with the index that wrote it.  Deterministic:
iteration is by sorted key, and the dump preserves insertion order exactly.

TTL (issue 16): an entry written by ``kv.put_ttl`` also keeps ``expires_at``
(the proposer's wall clock in the command plus the TTL, so every replica
computes the same instant).  The store never reads a clock: the leader asks
``due(now)`` which keys have passed their expiry and commits a ``kv.expire``
for them, and ``expire(ns, keys, at)`` removes only those still due at the
command's time (a key written again since keeps its new value).  Readers pass
their ``now`` so a key past its expiry is never shown in the moments before
that entry commits.  A plain put, a cas or a delete clears a key's TTL.
"""

from __future__ import annotations

import fnmatch
import heapq
from dataclasses import dataclass
from typing import Any

DEFAULT_LIST_LIMIT = 10_000
"""``list`` returns at most this many items unless asked for fewer."""


GLOB_CHARS = "*?["
"""Characters that make a search pattern a glob (``fnmatch``); anything else is a prefix."""


@dataclass(slots=True)
class KvEntry:
    value: bytes
    create_index: int
    mod_index: int
    expires_at: float | None = None
    """Unix time the key expires (``kv.put_ttl``), None without a TTL."""


def _live(row: list[Any], now: float | None) -> bool:
    return now is None or len(row) < 4 or row[3] > now


class KvStore:
    """All namespaces.  Mutators take the log index of the command applying them.

    Entries are kept as ``[value, create_index, mod_index]`` lists, the rows of
    the snapshot: a snapshot (every few thousand writes, of every key) then
    packs the store as it is instead of building a row per key first."""

    __slots__ = ("_expiring", "_spaces")

    def __init__(self) -> None:
        self._spaces: dict[str, dict[str, list[Any]]] = {}
        # (ns, key) -> expires_at of every entry with a TTL (rows of 4 items).
        self._expiring: dict[tuple[str, str], float] = {}

    def get(self, ns: str, key: str, now: float | None = None) -> KvEntry | None:
        """The entry, or None; with ``now``, None also once its TTL has passed."""
        row = self._spaces.get(ns, {}).get(key)
        if row is None or not _live(row, now):
            return None
        return KvEntry(row[0], row[1], row[2], row[3] if len(row) > 3 else None)

    def put(self, ns: str, key: str, value: bytes, index: int) -> None:
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = {}
        row = space.get(key)
        if row is None:
            space[key] = [value, index, index]
        else:
            row[0] = value
            row[2] = index
            if len(row) > 3:  # a plain write clears the TTL
                del row[3:]
                self._expiring.pop((ns, key), None)

    def put_ttl(self, ns: str, key: str, value: bytes, index: int, expires_at: float) -> None:
        """Write ``value`` that expires at ``expires_at`` (unix time, from the command)."""
        self.put(ns, key, value, index)
        self._spaces[ns][key].append(expires_at)
        self._expiring[(ns, key)] = expires_at

    def delete(self, ns: str, key: str) -> bool:
        space = self._spaces.get(ns)
        if space is None or key not in space:
            return False
        if len(space.pop(key)) > 3:
            self._expiring.pop((ns, key), None)
        if not space:
            del self._spaces[ns]
        return True

    def cas(self, ns: str, key: str, expected: bytes | None, value: bytes, index: int) -> bool:
        """Write ``value`` iff the current value equals ``expected`` (None: absent)."""
        row = self._spaces.get(ns, {}).get(key)
        current = row[0] if row is not None else None
        if current != expected:
            return False
        self.put(ns, key, value, index)
        return True

    def scan(
        self, ns: str, prefix: str = "", limit: int = DEFAULT_LIST_LIMIT, now: float | None = None
    ) -> list[tuple[str, bytes]]:
        """``(key, value)`` pairs whose key starts with ``prefix``, sorted by key
        (with ``now``: without the keys whose TTL has passed)."""
        space = self._spaces.get(ns, {})
        keys = sorted(k for k, row in space.items() if k.startswith(prefix) and _live(row, now))
        return [(k, space[k][0]) for k in keys[: max(0, limit)]]

    def search(
        self, ns: str, pattern: str, limit: int = DEFAULT_LIST_LIMIT, now: float | None = None
    ) -> list[tuple[str, bytes]]:
        """Keys matching ``pattern``: a glob (``*``, ``?``, ``[...]``, case-sensitive, ``*``
        crosses ``/``) when it holds one of ``GLOB_CHARS``, else a prefix."""
        cut = min((i for i, c in enumerate(pattern) if c in GLOB_CHARS), default=-1)
        if cut < 0:
            return self.scan(ns, pattern, limit, now)
        space = self._spaces.get(ns, {})
        head = pattern[:cut]
        keys = sorted(
            k for k, row in space.items()
            if k.startswith(head) and fnmatch.fnmatchcase(k, pattern) and _live(row, now)
        )  # fmt: skip
        return [(k, space[k][0]) for k in keys[: max(0, limit)]]

    # ------------------------------------------------------------ TTL

    def due(self, now: float, limit: int) -> dict[str, list[str]]:
        """Up to ``limit`` keys whose expiry is at or before ``now``, soonest first, by namespace."""
        soonest = heapq.nsmallest(
            limit, ((at, nk) for nk, at in self._expiring.items() if at <= now)
        )
        out: dict[str, list[str]] = {}
        for _, (ns, key) in soonest:
            out.setdefault(ns, []).append(key)
        return out

    def next_expiry(self) -> float | None:
        """The earliest expiry of any key, None when no key has a TTL."""
        return min(self._expiring.values(), default=None)

    def expire(self, ns: str, keys: tuple[str, ...] | list[str], at: float) -> list[str]:
        """Remove those of ``keys`` whose expiry is at or before ``at``; the removed keys."""
        removed = []
        for key in keys:
            expires_at = self._expiring.get((ns, key))
            if expires_at is not None and expires_at <= at:
                self.delete(ns, key)
                removed.append(key)
        return removed

    def namespaces(self) -> list[str]:
        return sorted(self._spaces)

    def __len__(self) -> int:
        return sum(len(space) for space in self._spaces.values())

    def dump(self) -> dict[str, Any]:
        """``{ns: {key: [value, create_index, mod_index(, expires_at)]}}``: the live
        store, not a copy -- pack it at once and never mutate it."""
        return self._spaces

    def load(self, data: dict[str, Any]) -> None:
        self._spaces = {
            ns: {
                k: [bytes(v[0]), int(v[1]), int(v[2]), *([float(v[3])] if len(v) > 3 else [])]
                for k, v in space.items()
            }
            for ns, space in data.items()
        }
        self._expiring = {
            (ns, k): row[3]
            for ns, space in self._spaces.items()
            for k, row in space.items()
            if len(row) > 3
        }
