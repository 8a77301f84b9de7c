"""``replicas.list`` / ``replicas.replace`` (agent/runtime/handlers/replicas.py): a Raft
cluster refuses both with one line; names resolve to ids; the driver's refusals pass
through as ``bad_request`` lines; the membership rules every replica applies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.errors import TaskError
from agent.pbft.reconfig import (
    GroupInfo,
    Membership,
    boundary,
    decode_replace,
    encode_replace,
    split_snapshot,
    wrap_snapshot,
)
from agent.runtime.handlers import replicas


class Names:
    ids = {"a": "1" * 32, "b": "2" * 32}

    def name_of(self, node_id: str | None) -> str | None:
        return next((n for n, i in self.ids.items() if i == node_id), None)

    def resolve(self, id_or_name: str) -> str:
        if id_or_name in self.ids.values():
            return id_or_name
        if id_or_name in self.ids:
            return self.ids[id_or_name]
        raise TaskError(f"unknown node {id_or_name}")


class Port:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def replica_set(self) -> dict[str, Any]:
        return {"engine": "pbft", "replicas": [Names.ids["a"]], "followers": [Names.ids["b"]],
                "n": 4, "f": 1, "pending": None, "fingerprints": {}}

    async def replace_replica(self, old: str, new: str) -> dict[str, Any]:
        self.asked.append((old, new))
        if new == "nosuch":
            raise ValueError("replicas replace: nosuch is not a live member")
        return {"old": old, "new": new, "effective_after": 64}


def test_a_raft_cluster_refuses_with_one_line() -> None:
    methods = replicas.handlers(None, Names())
    for method in ("replicas.list", "replicas.replace"):
        with pytest.raises(ValueError, match="runs Raft") as err:
            asyncio.run(methods[method]({"old": "a", "new": "b"}))
        assert "\n" not in str(err.value)


def test_names_resolve_and_refusals_pass_through() -> None:
    port = Port()
    methods = replicas.handlers(port, Names())
    done = asyncio.run(methods["replicas.replace"]({"old": "a", "new": "b"}))
    assert done == {"old": "a", "new": "b", "effective_after": 64}
    assert port.asked == [(Names.ids["a"], Names.ids["b"])]
    with pytest.raises(ValueError, match="not a live member"):
        asyncio.run(methods["replicas.replace"]({"old": "a", "new": "nosuch"}))
    listed = asyncio.run(methods["replicas.list"]({}))
    assert listed["replicas"] == [{"id": Names.ids["a"], "name": "a"}]
    assert listed["followers"] == [{"id": Names.ids["b"], "name": "b"}]


def test_membership_decides_once_and_switches_at_the_boundary() -> None:
    m = Membership(("r0", "r1", "r2", "r3"), interval=8)
    assert decode_replace(encode_replace("r1", "r4", b"\x01")).key == b"\x01"  # type: ignore[union-attr]
    assert m.decide(5, encode_replace("r9", "r4")) == (False, "r9 is not a replica", 0)
    assert m.decide(5, encode_replace("r1", "r2")) == (False, "r2 is already a replica", 0)
    assert m.decide(5, encode_replace("r1", "r4")) == (True, "", 8) and boundary(8, 8) == 8
    assert m.decide(6, encode_replace("r2", "r5"))[0] is False  # one pending at a time
    assert m.fence == 8 and m.signers(8).replicas == ("r0", "r1", "r2", "r3")
    assert m.signers(9).replicas == ("r0", "r4", "r2", "r3")  # NEW takes OLD's position
    info = m.group_after(8)
    assert info == GroupInfo(("r0", "r4", "r2", "r3"), ("r0", "r1", "r2", "r3"), 8)
    assert split_snapshot(wrap_snapshot(info, b"app")) == (info, b"app")
    assert split_snapshot(b"bare") == (None, b"bare")
    assert m.adopt(info, 8) and m.pending is None and m.group.replicas == info.replicas
    assert m.signers(8).replicas == ("r0", "r1", "r2", "r3") and m.signers(16).replicas == info.replicas
