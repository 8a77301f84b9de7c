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
    """All namespaces.  Mutators take the log index of the command applying them."""

    __slots__ = ("_spaces",)

    def __init__(self) -> None:
        self._spaces: dict[str, dict[str, KvEntry]] = {}

    def get(self, ns: str, key: str) -> KvEntry | None:
        return self._spaces.get(ns, {}).get(key)

    def put(self, ns: str, key: str, value: bytes, index: int) -> None:
        space = self._spaces.setdefault(ns, {})
        entry = space.get(key)
        if entry is None:
            space[key] = KvEntry(value, index, index)
        else:
            entry.value = value
            entry.mod_index = index

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
        entry = self.get(ns, key)
        current = entry.value if entry is not None else None
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
        return [(k, space[k].value) for k in keys]

    def namespaces(self) -> list[str]:
        return sorted(self._spaces)

    def __len__(self) -> int:
        return sum(len(space) for space in self._spaces.values())

    def dump(self) -> dict[str, Any]:
        return {
            ns: {k: [e.value, e.create_index, e.mod_index] for k, e in space.items()}
            for ns, space in self._spaces.items()
        }

    def load(self, data: dict[str, Any]) -> None:
        self._spaces = {
            ns: {k: KvEntry(bytes(v[0]), int(v[1]), int(v[2])) for k, v in space.items()}
            for ns, space in data.items()
        }
