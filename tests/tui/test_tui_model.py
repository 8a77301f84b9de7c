"""Unit tests of the view-model fold and the pure rendering helpers."""

from __future__ import annotations

from meshtui.model import MAX_LOG_LINES, Connection, MeshModel, matches_filter
from meshtui.widgets.render import sparkline
from meshtui.widgets.topology import BrailleCanvas, TopoNode, TopoView, draw


def status(leader: str = "n1", **extra: object) -> dict[str, object]:
    return {
        "node": "n1",
        "members": [
            {"name": "n1", "addr": "a:1", "state": "alive", "cpu": 0.1, "rtt_ms": None},
            {"name": "n2", "addr": "a:2", "state": "alive", "cpu": 0.9, "rtt_ms": 0.5},
        ],
        "consensus": {
            "engine": "raft",
            "role": "leader",
            "term": 2,
            "leader": leader,
            "commit_index": 7,
            "voters": ["n1", "n2"],
        },
        "tasks": {"queued": 1, "running": 2, "done": 3, "failed": 0},
        **extra,
    }


def test_status_folds_members_consensus_and_flags() -> None:
    m = MeshModel()
    m.apply_status(status(), sample_cpu=True)
    assert m.node == "n1"
    assert sorted(m.members) == ["n1", "n2"]
    assert list(m.members["n2"].cpu_history) == [90.0]  # fractions in, percent kept
    assert (m.consensus.term, m.consensus.leader, m.consensus.commit_index) == (2, "n1", 7)
    assert m.banner() == ("info", "connecting…")
    m.set_connection(Connection("connected"))
    assert m.banner() is None
    m.apply_status(status(partitioned=True, read_only=True))
    assert m.banner() == ("warning", "NO QUORUM — read-only here")


def test_authoritative_members_drop_the_missing_and_keep_history() -> None:
    m = MeshModel()
    m.apply_members([{"name": "a", "cpu": 0.25}, {"name": "b", "cpu": 0.5}])
    m.apply_members([{"name": "a", "cpu": 0.75}])
    assert list(m.members) == ["a"]
    assert list(m.members["a"].cpu_history) == [25.0, 75.0]


def test_member_events_imply_state_and_partition_flags() -> None:
    m = MeshModel()
    m.apply_status(status())
    m.apply_event({"event": "members", "data": {"kind": "suspect", "member": {"name": "n2"}}}, 0)
    assert m.members["n2"].state == "suspect"
    m.apply_event({"event": "members", "data": {"kind": "leave", "member": {"name": "n2"}}}, 0)
    assert m.members["n2"].state == "left"
    m.apply_event({"event": "members", "data": {"kind": "join", "member": {"name": "n9"}}}, 0)
    assert m.members["n9"].state == "alive"
    m.apply_event({"event": "members", "data": {"kind": "partitioned"}}, 0)
    assert m.partitioned
    m.apply_event({"event": "members", "data": {"kind": "healed"}}, 0)
    assert not m.partitioned


def test_consensus_events_log_lines_and_track_leader() -> None:
    m = MeshModel()
    m.apply_event(
        {
            "event": "consensus",
            "data": {"kind": "entry", "term": 3, "index": 9, "summary": "kv.put"},
        },
        100.0,
    )
    m.apply_event({"event": "consensus", "data": {"kind": "leader", "term": 4, "leader": "n2"}}, 101.0)
    assert [(ln.seq, ln.kind, ln.text) for ln in m.log] == [
        (1, "entry", "kv.put"),
        (2, "leader", "leader is n2"),
    ]
    assert m.log[0].at == 100.0
    assert (m.consensus.term, m.consensus.leader, m.consensus.commit_index) == (4, "n2", 9)


def test_log_is_bounded() -> None:
    m = MeshModel()
    for i in range(MAX_LOG_LINES + 5):
        m.apply_event({"event": "consensus", "data": {"kind": "entry", "term": 1, "index": i + 1}}, 0)
    assert len(m.log) == MAX_LOG_LINES
    assert m.log[0].seq == 6


def test_task_events_merge_and_migrations_move_the_task() -> None:
    m = MeshModel()
    m.apply_event(
        {"event": "tasks", "data": {"kind": "submitted", "task": {"id": "t1", "state": "queued"}}},
        0,
    )
    m.apply_event(
        {
            "event": "tasks",
            "data": {
                "kind": "started",
                "task": {"id": "t1", "state": "running", "node": "a", "epoch": 1},
            },
        },
        0,
    )
    m.apply_event(
        {
            "event": "migrations",
            "data": {
                "task": "t1",
                "from": "a",
                "to": "b",
                "reason": "steal",
                "epoch": 2,
                "at": 5.0,
            },
        },
        9,
    )
    assert m.tasks["t1"]["node"] == "b" and m.tasks["t1"]["epoch"] == 2
    assert m.migrations[-1].at == 5.0 and m.migrations[-1].reason == "steal"
    assert m.migrations_per_minute(30.0) == 1
    assert m.migrations_per_minute(100.0) == 0


def test_garbage_events_are_ignored() -> None:
    m = MeshModel()
    for bad in (
        {},
        {"event": "members"},
        {"event": "members", "data": []},
        {"event": "tasks", "data": {"task": {"no": "id"}}},
        {"event": "nope", "data": {}},
    ):
        m.apply_event(bad, 0)
    assert not m.members and not m.tasks and not m.log


def test_disconnected_banner_names_the_retry_delay() -> None:
    m = MeshModel()
    m.set_connection(Connection("disconnected", 2.0, "connection reset"))
    assert m.banner() == ("error", "disconnected — reconnecting in 2s… (connection reset)")


def test_filter_needs_every_word() -> None:
    assert matches_filter("n4 127.0.0.1 dead gpu", "dead GPU")
    assert not matches_filter("n4 127.0.0.1 dead gpu", "dead ssd")
    assert matches_filter("anything", "")


def test_sparkline_scale_is_fixed() -> None:
    assert sparkline([0, 50, 100], 3) == "▁▅█"
    assert sparkline([10], 4) == "   ▁"


def test_braille_line_sets_dots() -> None:
    c = BrailleCanvas(2, 1)
    c.line(0, 0, 3, 3, "red")
    assert c.render().plain == "⠑⢄"


def test_topology_marks_leader_and_states() -> None:
    nodes = (
        TopoNode("a", "alive", None, False, True),
        TopoNode("b", "dead", None, True, False),
        TopoNode("c", "suspect", 3.0, False, False),
    )
    out = draw(TopoView(nodes), 50, 16).plain
    assert "◉ a" in out and "★ b" in out and "c ●" in out  # labels sit outside the circle
    assert draw(TopoView(), 20, 5).plain.strip() == "no members yet"


def test_node_ids_in_events_are_shown_as_names() -> None:
    m = MeshModel()
    nid = "63606805139dcec5cc1033bee21e5165"
    m.apply_members([{"name": "n2", "id": nid}])
    m.apply_event({"event": "consensus", "data": {"kind": "leader", "term": 2, "leader": nid}}, 0)
    m.apply_event({"event": "consensus", "data": {"kind": "conf", "term": 2, "summary": f"promote {nid}"}}, 0)
    assert m.consensus.leader == "n2"
    assert [ln.text for ln in m.log] == ["leader is n2", "promote n2"]


def test_palette_submit_uses_a_shell_only_for_shell_syntax() -> None:
    from meshtui.screens.palette import submit_params

    plain = submit_params("python3 -c 'print(1)'")
    assert plain["argv"] == ["python3", "-c", "print(1)"] and "shell" not in plain
    piped = submit_params("seq 3 | wc -l")
    assert piped["shell"] == "seq 3 | wc -l" and "argv" not in piped
