"""``consensus.log`` and ``consensus.progress`` (agent/runtime/handlers/raftlog.py) over a
stand-in driver: real encoded entries, the summaries the live stream would carry, the
bound on entries, and the leader's progress rows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.raft.config import RaftConfig
from agent.raft.messages import Entry, EntryKind
from agent.runtime.handlers import raftlog
from agent.state import builders

IDS = {"a" * 32: "n1", "b" * 32: "n2", "c" * 32: "n3"}


class Names:
    def name_of(self, node_id: str | None) -> str | None:
        return IDS.get(node_id or "")

    def resolve(self, id_or_name: str) -> str:
        return id_or_name


class Driver:
    """What ``LogSource`` reads: a committed log and a leader's progress view."""

    raft_config = RaftConfig(tick_interval=0.05)
    node_id = "a" * 32
    leader_id = "a" * 32

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def status(self) -> dict[str, Any]:
        return {"commit_index": self.entries[-1].index}

    def log_view(self, after: int, limit: int) -> tuple[dict[str, dict[str, object]], list[Entry]]:
        committed = self.entries[-1].index
        lo = max(after + 1, committed - limit + 1)
        progress: dict[str, dict[str, object]] = {
            "a" * 32: {"match": 12, "state": "replicate", "learner": False, "active": True, "heard_ticks": 0},
            "b" * 32: {"match": 12, "state": "replicate", "learner": False, "active": True, "heard_ticks": 1},
            "c" * 32: {"match": 9, "state": "probe", "learner": True, "active": False, "heard_ticks": 40},
        }
        return progress, [e for e in self.entries if lo <= e.index <= committed]


def entries() -> list[Entry]:
    out = [Entry(1, 1, EntryKind.EMPTY, b""), Entry(1, 2, EntryKind.CONF_CHANGE, b"\x01")]
    for index in range(3, 13):
        data = builders.cmd_node_drain("b" * 32, f"rid{index}", 1_790_000_000.0 + index)
        out.append(Entry(2, index, EntryKind.NORMAL, data))
    return out


def call(method: str, driver: object, **params: Any) -> Any:
    handler = raftlog.handlers(driver, Names())[method]
    return asyncio.run(handler(params))  # type: ignore[arg-type]


def test_recent_entries_by_index_with_summaries_and_times() -> None:
    reply = call("consensus.log", Driver(entries()), after=0, limit=100)
    rows = reply["entries"]
    assert [r["index"] for r in rows] == list(range(1, 13)) and reply["commit_index"] == 12
    assert rows[0]["summary"] == "no-op (new leader)" and rows[1]["summary"] == "membership change"
    assert rows[2] == {"index": 3, "term": 2, "at": 1_790_000_003.0, "summary": "node.drain n2"}


def test_after_and_limit_bound_the_backfill() -> None:
    reply = call("consensus.log", Driver(entries()), after=5, limit=3)
    assert [r["index"] for r in reply["entries"]] == [10, 11, 12]  # the newest three after 5
    assert reply["first_index"] == 10
    assert call("consensus.log", Driver(entries()), after=12)["entries"] == []
    with pytest.raises(ValueError):
        call("consensus.log", Driver(entries()), after=-1)


def test_progress_is_the_leaders_view_in_seconds() -> None:
    reply = call("consensus.progress", Driver(entries()))
    rows = {r["name"]: r for r in reply["peers"]}
    assert reply["leader"] == "n1" and reply["last_index"] == 12
    assert rows["n1"]["state"] == "leader" and rows["n2"]["last_contact_s"] == 0.05
    assert rows["n3"] == {"name": "n3", "id": "c" * 32, "match": 9, "lag": 3, "state": "probe",
                          "learner": True, "active": False, "last_contact_s": 2.0}


def test_a_consensus_port_without_the_accessor_answers_empty() -> None:
    assert call("consensus.log", object())["entries"] == []
    assert call("consensus.progress", object())["peers"] == []
