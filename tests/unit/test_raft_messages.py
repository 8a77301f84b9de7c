"""Raft messages: wire numbers, codec round trips, membership change encoding."""

from __future__ import annotations

import dataclasses

from agent import wire
from agent.raft.messages import (
    WIRE_TYPES,
    AppendEntries,
    AppendResp,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResp,
    InstallSnapshot,
    InstallSnapshotResp,
    ReadIndexReq,
    ReadIndexResp,
    RepairGrant,
    RepairRequest,
    RequestVote,
    RequestVoteResp,
    Snapshot,
    StartCheck,
    StartCheckResp,
    TimeoutNow,
)

SAMPLES = [
    AppendEntries("a", "b", 3, 10, 2, (Entry(3, 11, EntryKind.CONF_CHANGE, b"0:x"),), 9),
    AppendResp("a", "b", 3, 5, True, 4, 2),
    RequestVote("a", "b", 4, 10, 3, pre_vote=True, transfer=False),
    RequestVoteResp("a", "b", 4, True, pre_vote=True),
    Heartbeat("a", "b", 3, 9, b"ctx"),
    HeartbeatResp("a", "b", 3, b""),
    InstallSnapshot("a", "b", 3, Snapshot(10, 2, ConfState(("a", "b"), ("c",)), b"data")),
    InstallSnapshotResp("a", "b", 3, 10),
    TimeoutNow("a", "b", 3),
    ReadIndexReq("a", "b", 3, b"q"),
    ReadIndexResp("a", "b", 3, b"q", 7),
    RepairRequest("a", "b", 3, "wal: lost 4 entries"),
    RepairGrant("a", "b", 3),
    StartCheck("a", "b", 3, 17),
    StartCheckResp("a", "b", 3, 12),
]


def test_wire_numbers_are_in_the_raft_range_and_unique() -> None:
    assert all(40 <= n <= 69 for n in WIRE_TYPES)
    assert len(set(WIRE_TYPES.values())) == len(WIRE_TYPES)
    assert {type(m) for m in SAMPLES} == set(WIRE_TYPES.values())


def test_every_message_starts_with_frm_to_term() -> None:
    for cls in WIRE_TYPES.values():
        names = [f.name for f in dataclasses.fields(cls)]
        assert names[:3] == ["frm", "to", "term"], cls


def test_codec_round_trip() -> None:
    for msg in SAMPLES:
        assert wire.decode(wire.encode(msg)) == msg


def test_conf_change_encoding() -> None:
    for kind in ConfChangeKind:
        change = ConfChange(kind, "0123abcd")
        assert ConfChange.decode(change.encode()) == change
