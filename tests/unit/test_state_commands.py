"""Every command's validation: constructors round-trip, bad fields are refused with
ProtocolError, and a bad committed entry is a no-op with an error result."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from agent.errors import ProtocolError
from agent.state import (
    StateMachine,
    TaskStats,
    cmd_batch,
    cmd_kv_cas,
    cmd_kv_delete,
    cmd_kv_put,
    cmd_node_drain,
    cmd_node_register,
    cmd_node_undrain,
    cmd_proposal_create,
    cmd_proposal_vote,
    cmd_task_assign,
    cmd_task_cancel,
    cmd_task_fail_node,
    cmd_task_finish,
    cmd_task_lost,
    cmd_task_migrate,
    cmd_task_place,
    cmd_task_start,
    cmd_task_submit,
    decode_command,
    task_spec,
)

VALID = {
    "kv.put": cmd_kv_put("ns", "k", b"v", "r", 1.0),
    "kv.delete": cmd_kv_delete("ns", "k", "r", 1.0),
    "kv.cas": cmd_kv_cas("ns", "k", None, b"v", "r", 1.0),
    "proposal.create": cmd_proposal_create("t", "b", "p", "r", 1.0),
    "proposal.vote": cmd_proposal_vote(1, "n1", True, "r", 1.0),
    "node.register": cmd_node_register("id1", "n1", "r", 1.0),
    "node.drain": cmd_node_drain("n1", "r", 1.0),
    "node.undrain": cmd_node_undrain("n1", "r", 1.0),
    "task.submit": cmd_task_submit(task_spec(["true"]), "r", 1.0),
    "task.assign": cmd_task_assign("t1", "n1", 1, "auction", "r", 1.0),
    "batch": cmd_batch([cmd_kv_put("ns", "k", b"v", "r", 1.0)], "r", 1.0),
    "task.place": cmd_task_place([("t1", "n1", 1), ("t2", "n2", 3), ("t3", "n1", 1)], "r", 1.0),
    "task.start": cmd_task_start("t1", "n1", 1, "r", 1.0),
    "task.finish": cmd_task_finish("t1", "n1", 1, 0, TaskStats(1.0, 0.5, 10), "r", 1.0, ["n2"]),
    "task.cancel": cmd_task_cancel("t1", "r", 1.0),
    "task.migrate": cmd_task_migrate("t1", "n2", "steal", "r", 1.0, epoch=1),
    "task.lost": cmd_task_lost("t1", "r", 1.0, "gone"),
    "task.fail_node": cmd_task_fail_node("n1", {"t1": "n2"}, "r", 1.0),
}


def raw(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return out


def pack(mapping: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(mapping, use_bin_type=True)
    return out


@pytest.mark.parametrize("op", sorted(VALID))
def test_constructors_round_trip(op: str) -> None:
    cmd = decode_command(VALID[op])
    assert cmd.op == op and cmd.rid == "r" and cmd.at == 1.0


def test_decoded_fields_have_their_types() -> None:
    cmd = decode_command(VALID["task.finish"])
    assert cmd.body.stats == TaskStats(1.0, 0.5, 10)  # type: ignore[union-attr]
    assert cmd.body.replicas == ("n2",)  # type: ignore[union-attr]
    sub = decode_command(cmd_task_submit(task_spec(["a", "b"], env={"X": "1"}, key="k"), "", 0.0))
    assert sub.body.argv == ("a", "b") and sub.body.strategy == "hash"  # type: ignore[union-attr]


def mutate(base: str, changes: dict[str, Any]) -> bytes:
    mapping = raw(VALID[base])
    for k, v in changes.items():
        if v is DELETE:
            del mapping[k]
        else:
            mapping[k] = v
    return pack(mapping)


DELETE = object()

BAD = [
    ("kv.put", {"op": "kv.nope"}, "unknown op"),
    ("kv.put", {"op": DELETE}, "unknown op"),
    ("kv.put", {"rid": 5}, "rid"),
    ("kv.put", {"rid": "x" * 129}, "rid"),
    ("kv.put", {"at": "now"}, "at"),
    ("kv.put", {"at": float("nan")}, "finite"),
    ("kv.put", {"at": DELETE}, "at"),
    ("kv.put", {"ns": ""}, "namespace"),
    ("kv.put", {"key": ""}, "key"),
    ("kv.put", {"key": "k" * 1025}, "key"),
    ("kv.put", {"value": "text, not bytes"}, "value"),
    ("kv.put", {"value": b"x" * (1024 * 1024 + 1)}, "exceeds"),
    ("kv.put", {"value": DELETE}, "missing"),
    ("kv.put", {"extra": 1}, "unknown field"),
    ("kv.cas", {"expected": 3}, "expected"),
    ("proposal.create", {"threshold": 0.0}, "threshold"),
    ("proposal.create", {"threshold": 1.5}, "threshold"),
    ("proposal.create", {"kind": "poll"}, "kind"),
    ("proposal.create", {"title": "t" * 201}, "too long"),
    ("proposal.vote", {"approve": 1}, "approve"),
    ("proposal.vote", {"id": True}, "id"),
    ("proposal.vote", {"id": -1}, ">= 0"),
    ("proposal.vote", {"voter": ""}, "voter"),
    ("node.register", {"node": ""}, "node"),
    ("node.drain", {"node": ""}, "id"),
    ("task.submit", {"argv": None}, "exactly one"),
    ("task.submit", {"shell": "echo hi"}, "exactly one"),
    ("task.submit", {"argv": []}, "argv"),
    ("task.submit", {"argv": [1]}, "argv"),
    ("task.submit", {"argv": "true"}, "list"),
    ("task.submit", {"env": {"A=B": "1"}}, "env"),
    ("task.submit", {"env": {"A": 1}}, "env"),
    ("task.submit", {"env": []}, "map"),
    ("task.submit", {"caps": ["x"] * 65}, "capabilities"),
    ("task.submit", {"strategy": "random"}, "strategy"),
    ("task.submit", {"priority": 1001}, "priority"),
    ("task.submit", {"retries": -1}, "retries"),
    ("task.submit", {"timeout": 0.0}, "timeout"),
    ("task.submit", {"restartable": "yes"}, "restartable"),
    ("task.assign", {"epoch": -1}, "epoch"),
    ("task.assign", {"epoch": 1.5}, "epoch"),
    ("task.assign", {"node": ""}, "ids"),
    ("batch", {"cmds": []}, "commands per batch"),
    ("batch", {"cmds": ["text"]}, "cmds"),
    ("task.place", {"tasks": []}, "placements"),
    ("task.place", {"hosts": [0, 1]}, "placements"),
    ("task.place", {"epochs": [1, 1, 1, 1]}, "placements"),
    ("task.place", {"hosts": [0, 2, 0]}, "host indexes"),
    ("task.place", {"hosts": [0, -1, 0]}, "host indexes"),
    ("task.place", {"epochs": [1, -1, 1]}, "epochs"),
    ("task.place", {"nodes": ["n1", ""]}, "node ids"),
    ("task.place", {"tasks": ["t1", "", "t3"]}, "task ids"),
    ("task.place", {"tasks": ["t1"] * 4097, "hosts": [0] * 4097, "epochs": [1] * 4097},
     "placements"),
    ("task.place", {"hosts": [0, "1", 0]}, "hosts"),
    ("task.start", {"task": DELETE}, "missing"),
    ("task.finish", {"exit_code": "0"}, "exit_code"),
    ("task.finish", {"stats": {"duration": -1.0}}, ">= 0"),
    ("task.finish", {"stats": {"bogus": 1}}, "unknown field"),
    ("task.finish", {"replicas": ["n"] * 17}, "replicas"),
    ("task.migrate", {"to": ""}, "ids"),
    ("task.migrate", {"reason": "r" * 300}, "reason"),
    ("task.lost", {"task": ""}, "id"),
    ("task.fail_node", {"targets": {"t1": 5}}, "targets"),
    ("task.fail_node", {"targets": {1: "n"}}, "targets"),
]


@pytest.mark.parametrize(
    ("op", "changes", "match"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_fields_are_refused(op: str, changes: dict[str, Any], match: str) -> None:
    data = mutate(op, changes)
    with pytest.raises(ProtocolError, match=match):
        decode_command(data)
    # committed anyway: a no-op with an error result, never a crash
    sm = StateMachine()
    before = sm.snapshot()
    result = sm.apply(1, data)
    assert not result.ok and result.error
    assert sm.applied_index == 1
    after = StateMachine()
    after.restore(before)
    after.applied_index = 1
    assert sm.snapshot() == after.snapshot()


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x93\x01\x02\x03", pack({"op": "kv.put"}) + b"x", b"\xff" * 10]
)
def test_garbage_entries(data: bytes) -> None:
    sm = StateMachine()
    result = sm.apply(1, data)
    if data == b"":
        assert result.ok  # a leader's empty no-op entry
    else:
        assert not result.ok and result.error


def test_oversized_command_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_command(b"\x00" * (4 * 1024 * 1024 + 1))


def test_constructors_validate_eagerly() -> None:
    with pytest.raises(ProtocolError):
        cmd_kv_put("", "k", b"v", "r", 0.0)
    with pytest.raises(ProtocolError):
        cmd_task_submit(task_spec(None, None), "r", 0.0)


def test_integer_at_is_accepted_as_float() -> None:
    assert decode_command(mutate("kv.put", {"at": 5})).at == 5.0


def test_encoding_validates_field_types_without_decoding() -> None:
    from agent.state.commands import KvPut, TaskFinish, encode_command

    with pytest.raises(ProtocolError, match="value"):
        encode_command(KvPut("ns", "k", "text"), "r", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="rid"):
        encode_command(KvPut("ns", "k", b"v"), "x" * 129, 0.0)
    with pytest.raises(ProtocolError, match="finite"):
        encode_command(KvPut("ns", "k", b"v"), "r", float("inf"))
    bad_stats = TaskFinish("t1", "n1", 1, 0, TaskStats(peak_rss="lots"))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"stats\.peak_rss"):
        encode_command(bad_stats, "r", 0.0)


def test_encoding_is_plain_msgpack_in_field_order() -> None:
    assert raw(VALID["task.finish"]) == {
        "op": "task.finish", "rid": "r", "at": 1.0, "task": "t1", "node": "n1", "epoch": 1,
        "exit_code": 0, "stats": {"duration": 1.0, "cpu_time": 0.5, "peak_rss": 10,
                                  "timed_out": False},
        "replicas": ["n2"],
    }
    assert list(raw(VALID["kv.put"])) == ["op", "rid", "at", "ns", "key", "value"]
    # A round's placements: each node id written once, tasks point at it by index.
    assert raw(VALID["task.place"]) == {
        "op": "task.place", "rid": "r", "at": 1.0, "nodes": ["n1", "n2"],
        "tasks": ["t1", "t2", "t3"], "hosts": [0, 1, 0], "epochs": [1, 3, 1],
    }
