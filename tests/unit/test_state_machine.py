"""State machine: KV semantics and indexes, idempotency, proposals and thresholds,
the node table, config proposals, snapshots."""

from __future__ import annotations

import pytest

import agent.state.machine as machine_mod
from agent.errors import StorageError
from agent.state import (
    Proposal,
    StateMachine,
    cmd_kv_cas,
    cmd_kv_delete,
    cmd_kv_put,
    cmd_node_drain,
    cmd_node_register,
    cmd_node_undrain,
    cmd_proposal_create,
    cmd_proposal_vote,
    validate_proposal,
)


class Log:
    """Applies commands with consecutive indexes."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.index = 0

    def __call__(self, data: bytes) -> machine_mod.ApplyResult:
        self.index += 1
        return self.sm.apply(self.index, data)


def test_kv_put_get_indexes_and_list() -> None:
    log = Log()
    assert log(cmd_kv_put("app", "b", b"2", "r1", 1.0)).value == {"index": 1}
    log(cmd_kv_put("app", "a", b"1", "r2", 1.0))
    log(cmd_kv_put("other", "a", b"x", "r3", 1.0))
    log(cmd_kv_put("app", "b", b"22", "r4", 1.0))
    entry = log.sm.kv_get("app", "b")
    assert entry is not None and (entry.value, entry.create_index, entry.mod_index) == (b"22", 1, 4)
    assert log.sm.kv_list("app") == [["a", b"1"], ["b", b"22"]]
    assert log.sm.kv_list("app", "b") == [["b", b"22"]]
    assert log.sm.kv_list("app", limit=1) == [["a", b"1"]]
    assert log.sm.kv_list("missing") == []
    assert log.sm.kv_get("other", "b") is None


def test_kv_delete() -> None:
    log = Log()
    log(cmd_kv_put("ns", "k", b"v", "", 1.0))
    assert log(cmd_kv_delete("ns", "k", "", 1.0)).value == {"index": 2, "deleted": True}
    assert log(cmd_kv_delete("ns", "k", "", 1.0)).value == {"index": 3, "deleted": False}
    assert log.sm.kv_get("ns", "k") is None and log.sm.kv.namespaces() == []


@pytest.mark.parametrize(
    ("initial", "expected", "ok", "final"),
    [
        (None, None, True, b"new"),  # create-if-absent
        (b"old", None, False, b"old"),
        (None, b"old", False, None),
        (b"old", b"old", True, b"new"),
        (b"old", b"other", False, b"old"),
    ],
)
def test_kv_cas_table(
    initial: bytes | None, expected: bytes | None, ok: bool, final: bytes | None
) -> None:
    log = Log()
    if initial is not None:
        log(cmd_kv_put("ns", "k", initial, "", 1.0))
    result = log(cmd_kv_cas("ns", "k", expected, b"new", "", 1.0))
    assert result.ok and result.value == {"index": log.index, "ok": ok}
    entry = log.sm.kv_get("ns", "k")
    assert (entry.value if entry else None) == final


def test_retried_rid_applies_once_and_returns_cached_result() -> None:
    log = Log()
    first = log(cmd_kv_put("ns", "k", b"1", "client-1", 1.0))
    log(cmd_kv_put("ns", "k", b"2", "client-2", 2.0))
    retry = log(cmd_kv_put("ns", "k", b"1", "client-1", 3.0))
    assert retry.value == first.value == {"index": 1}
    entry = log.sm.kv_get("ns", "k")
    assert entry is not None and entry.value == b"2"  # the retry did not overwrite
    # an empty rid is never cached
    log(cmd_kv_put("ns", "x", b"a", "", 1.0))
    assert log(cmd_kv_put("ns", "x", b"b", "", 1.0)).value == {"index": 5}
    # cached errors are returned too
    bad = log(cmd_proposal_vote(99, "n1", True, "v1", 1.0))
    assert not bad.ok and log(cmd_proposal_vote(99, "n1", True, "v1", 1.0)).error == bad.error


def test_rid_cache_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "MAX_RIDS", 3)
    log = Log()
    for i in range(5):
        log(cmd_kv_put("ns", f"k{i}", b"v", f"r{i}", 1.0))
    assert list(log.sm.rids) == ["r2", "r3", "r4"]
    # r0 was forgotten: a very late retry applies again (documented bound)
    assert log(cmd_kv_put("ns", "k0", b"v", "r0", 1.0)).value == {"index": 6}


def test_apply_requires_increasing_index() -> None:
    sm = StateMachine()
    sm.apply(5, b"")
    with pytest.raises(AssertionError):
        sm.apply(5, b"")


@pytest.mark.parametrize(
    ("eligible", "threshold", "votes", "state"),
    [
        (3, 0.67, [True, True], "open"),  # 2 < 2.01
        (3, 0.67, [True, True, True], "passed"),
        (3, 0.67, [False], "rejected"),  # at most 2 yes left: can never pass
        (5, 0.67, [True, True, True, True], "passed"),  # 4 >= 3.35
        (5, 0.67, [True, True, True], "open"),
        (5, 0.67, [False, True, False], "rejected"),
        (4, 0.5, [True, True], "passed"),  # exactly half
        (4, 0.5, [False, False], "open"),  # 2 yes still possible
        (4, 0.5, [False, False, False], "rejected"),
        (1, 1.0, [True], "passed"),
        (10, 0.7, [True] * 7, "passed"),  # 7 >= 7.000000000000001 thanks to the epsilon
    ],
)
def test_proposal_threshold_table(
    eligible: int, threshold: float, votes: list[bool], state: str
) -> None:
    log = Log()
    created = log(cmd_proposal_create("t", "b", "n0", "", 1.0, threshold, eligible=eligible))
    pid = created.value["id"]
    tally = None
    for i, approve in enumerate(votes):
        result = log(cmd_proposal_vote(pid, f"n{i}", approve, "", 2.0))
        assert result.ok, result.error
        tally = result.value["tally"]
    assert tally is not None and tally["state"] == state
    assert tally["participation"] == pytest.approx(len(votes) / eligible)
    row = log.sm.proposal_rows()[0]
    assert (
        row["state"] == state
        and row["yes"] == votes.count(True)
        and row["no"] == votes.count(False)
    )


def test_votes_once_and_not_after_decision() -> None:
    log = Log()
    pid = log(cmd_proposal_create("t", "b", "n0", "", 1.0, 0.5, eligible=2)).value["id"]
    assert log(cmd_proposal_vote(pid, "n1", False, "", 1.0)).ok
    dup = log(cmd_proposal_vote(pid, "n1", True, "", 1.0))
    assert not dup.ok and "already voted" in (dup.error or "")
    log(cmd_proposal_vote(pid, "n2", True, "", 1.0))
    late = log(cmd_proposal_vote(pid, "n3", True, "", 1.0))
    assert not late.ok and "already passed" in (late.error or "")
    assert log.sm.vote_participation() == pytest.approx(1.0)


def test_eligible_defaults_to_registered_nodes_and_votes_refresh_it() -> None:
    log = Log()
    for i in range(4):
        log(cmd_node_register(f"id{i}", f"n{i}", "", 0.0))
    pid = log(cmd_proposal_create("t", "b", "id0", "", 1.0)).value["id"]
    proposal = log.sm.proposal(pid)
    assert proposal is not None and proposal.eligible == 4
    log(cmd_proposal_vote(pid, "id0", True, "", 1.0, eligible=2))
    assert proposal.eligible == 2 and proposal.state == "open"
    log(cmd_proposal_vote(pid, "id1", True, "", 1.0))
    assert proposal.state == "passed"


@pytest.mark.parametrize(
    ("title", "body", "threshold", "kind", "problem"),
    [
        ("ok", "", 0.67, "text", None),
        ("", "b", 0.67, "text", "empty title"),
        ("   ", "b", 0.67, "text", "empty title"),
        ("two\nlines", "b", 0.67, "text", "one line"),
        ("t", "x" * (64 * 1024 + 1), 0.67, "text", "body exceeds"),
        ("t", "", 0.0, "text", "threshold"),
        ("t", "", 1.01, "text", "threshold"),
        ("t", "", 0.5, "vote", "unknown kind"),
        ("t", "[sched]\nhot_above = 0.9\n", 0.67, "config", None),
        ("t", "[sched]\nhot_above = 2\n", 0.67, "config", "sched.hot_above"),
        ("t", "[sched]\nnope = 1\n", 0.67, "config", "unknown setting"),
        ("t", "[sched]\nvnodes = 'many'\n", 0.67, "config", "expected int"),
        ("t", "[raft]\nx = 1\n", 0.67, "config", "exactly one [sched]"),
        ("t", "not = = toml", 0.67, "config", "not TOML"),
    ],
)
def test_validate_proposal_table(
    title: str, body: str, threshold: float, kind: str, problem: str | None
) -> None:
    reason = validate_proposal(Proposal(1, title, body, "p", threshold, kind))
    if problem is None:
        assert reason is None
    else:
        assert reason is not None and problem in reason


def test_invalid_proposal_is_refused_at_apply() -> None:
    log = Log()
    result = log(
        cmd_proposal_create("t", "[sched]\nhot_above = 5.0\n", "p", "", 1.0, kind="config")
    )
    assert not result.ok and "hot_above" in (result.error or "")
    assert log.sm.proposal_rows() == []


def test_passed_config_proposal_changes_sched_config() -> None:
    log = Log()
    body = "[sched]\nsteal_margin = 3\nhot_window = 20\n"
    pid = log(cmd_proposal_create("margin", body, "p", "", 1.0, 0.5, "config", 2)).value["id"]
    assert log.sm.sched_config().steal_margin == 2
    log(cmd_proposal_vote(pid, "a", True, "", 2.0))
    cfg = log.sm.sched_config()
    assert (cfg.steal_margin, cfg.hot_window) == (3, 20.0)


def test_node_table_drain_by_id_or_name() -> None:
    log = Log()
    log(cmd_node_register("id1", "web1", "", 0.0))
    assert log.sm.name_of("id1") == "web1" and log.sm.name_of("id9") == "id9"
    assert log(cmd_node_drain("web1", "", 1.0)).value == {"node": "id1"}
    assert log.sm.is_draining("id1")
    assert log.sm.node_rows() == [{"id": "id1", "name": "web1", "draining": True}]
    log(cmd_node_undrain("id1", "", 1.0))
    assert not log.sm.is_draining("id1")
    unknown = log(cmd_node_drain("nobody", "", 1.0))
    assert not unknown.ok and "unknown node nobody" in (unknown.error or "")
    log(cmd_node_register("id1", "web1-renamed", "", 0.0))
    assert log.sm.name_of("id1") == "web1-renamed"


def test_consensus_summary_event_per_entry() -> None:
    log = Log()
    log(cmd_node_register("id1", "web1", "", 0.0))
    result = log(cmd_node_drain("id1", "", 1.0))
    assert result.events[-1] == {
        "topic": "consensus",
        "data": {"kind": "entry", "index": 2, "summary": "node.drain web1"},
    }


def test_snapshot_restore_round_trip() -> None:
    log = Log()
    log(cmd_node_register("id1", "web1", "", 0.0))
    log(cmd_kv_put("ns", "k", b"\x00\xff", "r1", 1.0))
    pid = log(cmd_proposal_create("t", "b", "id1", "r2", 1.0, eligible=3)).value["id"]
    log(cmd_proposal_vote(pid, "id1", True, "r3", 1.5))
    data = log.sm.snapshot()
    other = StateMachine()
    other.restore(data)
    assert other.snapshot() == data
    assert other.applied_index == log.index
    assert other.kv_get("ns", "k") == log.sm.kv_get("ns", "k")
    assert other.proposal_rows() == log.sm.proposal_rows()
    # the rid cache survived: a retry after restore is still a no-op
    assert other.apply(log.index + 1, cmd_kv_put("ns", "k", b"zz", "r1", 9.0)).value == {"index": 2}
    entry = other.kv_get("ns", "k")
    assert entry is not None and entry.value == b"\x00\xff"


@pytest.mark.parametrize("data", [b"", b"\x81\xa7version\x02", b"\x81\xa7version\x01", b"junk"])
def test_restore_rejects_bad_snapshots(data: bytes) -> None:
    sm = StateMachine()
    sm.apply(1, cmd_kv_put("ns", "k", b"v", "", 1.0))
    before = sm.snapshot()
    with pytest.raises(StorageError):
        sm.restore(data)
    assert sm.snapshot() == before  # a failed restore changes nothing


def test_applying_the_proposers_decoded_command_equals_decoding() -> None:
    from agent.state.commands import KvCas, KvPut, TaskSubmit, encode_command_decoded

    by_bytes, by_decoded = StateMachine(), StateMachine()
    bodies = [KvPut("ns", "k", b"v1"), KvCas("ns", "k", b"v1", b"v2"), KvPut("ns", "k", b"v3")]
    for index, body in enumerate(bodies, start=1):
        data, decoded = encode_command_decoded(body, f"r{index}", 5.0)
        assert decoded is not None
        assert by_bytes.apply(index, data) == by_decoded.apply(index, data, decoded)
    assert by_bytes.snapshot() == by_decoded.snapshot()
    # Ops whose fields decode to something else (tuples, floats) keep no decoded form.
    assert encode_command_decoded(TaskSubmit(argv=("true",)), "r", 1.0)[1] is None


def test_summaries_off_drops_only_the_consensus_entry_events() -> None:
    quiet, loud = StateMachine(), StateMachine()
    quiet.summaries = False
    data = cmd_kv_put("ns", "k", b"v", "r1", 1.0)
    a, b = quiet.apply(1, data), loud.apply(1, data)
    assert (a.ok, a.value, a.error) == (b.ok, b.value, b.error)
    assert a.events == [] and [e["topic"] for e in b.events] == ["consensus"]
    assert quiet.snapshot() == loud.snapshot()
