"""Namespaced key-value store of the state machine.

Keys are strings within a namespace; each entry keeps the log index that
created it and the one that last modified it (etcd's create/mod revisions), so
clients can read a value together with the index that wrote it.  Deterministic:
iteration is by sorted key, and the dump preserves insertion order exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_LIST_LIMIT = 10_000
"""``list`` returns at most this many items unless asked for fewer."""


@dataclass(slots=True)
class KvEntry:
    value: bytes
    create_index: int
    mod_index: int


class KvStore:
    """All namespaces.  Mutators take the log index of the command applying them.

    Entries are kept as ``[value, create_index, mod_index]`` lists, the rows of
    the snapshot: a snapshot (every few thousand writes, of every key) then
    packs the store as it is instead of building a row per key first."""

    __slots__ = ("_spaces",)

    def __init__(self) -> None:
        self._spaces: dict[str, dict[str, list[Any]]] = {}

    def get(self, ns: str, key: str) -> KvEntry | None:
        row = self._spaces.get(ns, {}).get(key)
        return None if row is None else KvEntry(row[0], row[1], row[2])

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

    def delete(self, ns: str, key: str) -> bool:
        space = self._spaces.get(ns)
        if space is None or key not in space:
            return False
        del space[key]
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
        self, ns: str, prefix: str = "", limit: int = DEFAULT_LIST_LIMIT
    ) -> list[tuple[str, bytes]]:
        """``(key, value)`` pairs whose key starts with ``prefix``, sorted by key."""
        space = self._spaces.get(ns, {})
        keys = sorted(k for k in space if k.startswith(prefix))[: max(0, limit)]
        return [(k, space[k][0]) for k in keys]

    def namespaces(self) -> list[str]:
        return sorted(self._spaces)

    def __len__(self) -> int:
        return sum(len(space) for space in self._spaces.values())

    def dump(self) -> dict[str, Any]:
        """``{ns: {key: [value, create_index, mod_index]}}``: the live store, not a
        copy -- pack it at once and never mutate it."""
        return self._spaces

    def load(self, data: dict[str, Any]) -> None:
        self._spaces = {
            ns: {k: [bytes(v[0]), int(v[1]), int(v[2])] for k, v in space.items()}
            for ns, space in data.items()
        }
