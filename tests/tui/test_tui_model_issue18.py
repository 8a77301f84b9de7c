"""Issue 18's view-model pieces, without an app: sorting, one-line commands, links,
the consensus backfill against the live stream, replication progress, the changes
feed and the progress of operations."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from meshtui.model import MeshModel, natural_key, one_line
from meshtui.ops import Operation
from meshtui.screens.mesh import links_text, member_row
from meshtui.screens.tasks import sort_tasks, task_row
from meshtui.widgets.topology import TopoNode, TopoView, draw, pair_links


def members(*rows: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "id": f"{i:02d}" + "b" * 30, "state": s, "role": "leader" if i == 1 else "voter"}
            for i, (n, s) in enumerate(rows, start=1)]


def test_task_ids_sort_naturally_and_live_first() -> None:
    ids = ["t1", "t10", "t11", "t19", "t2", "t20", "t3"]
    assert sorted(ids, key=natural_key) == ["t1", "t2", "t3", "t10", "t11", "t19", "t20"]
    tasks = [{"id": i, "state": "succeeded" if i == "t2" else "running"} for i in ids]
    assert [t["id"] for t in sort_tasks(tasks, None)] == ["t1", "t3", "t10", "t11", "t19", "t20", "t2"]
    assert [t["id"] for t in sort_tasks(tasks, "id", reverse=True)][:2] == ["t20", "t19"]
    by_state = [t["id"] for t in sort_tasks(tasks, "state")]
    assert by_state[-1] == "t2"  # finished last, ids natural within a state


def test_a_multi_line_command_is_one_line_in_the_table() -> None:
    cmd = ["python3", "-c", "import time\nend = time.time() + 3\r\nwhile\ttime.time() < end: pass"]
    assert one_line("a\nb\r\nc\td\x1b") == "a⏎b⏎c d"
    _, cells = task_row({"id": "t7", "state": "running", "cmd": cmd})
    shown = cells[-1]
    assert isinstance(shown, str) and "\n" not in shown and "⏎end = time" in shown
    _, marked = task_row({"id": "t7", "state": "running", "cmd": cmd}, marked=True)
    assert str(marked[0]).startswith("● ")


def test_dead_and_left_members_show_no_role() -> None:
    m = MeshModel()
    m.apply_members(members(("n1", "dead"), ("n2", "alive"), ("n3", "left")))
    roles = {name: member_row(m.members[name], None, "n2")[1][3] for name in ("n1", "n2", "n3")}
    assert roles == {"n1": "-", "n2": "voter", "n3": "-"}


def test_links_from_status_and_their_absence() -> None:
    m = MeshModel()
    m.apply_status({"node": "n1", "members": members(("n1", "alive"), ("n2", "alive"), ("n3", "alive"))})
    assert m.links is None  # no field: nothing drawn, nothing invented
    assert "no link state" in links_text(m, "n1").plain
    m.apply_status({"node": "n1", "links": [
        {"from": "n1", "to": "n2", "state": "direct", "rtt_ms": 0.4},
        {"from": "02" + "b" * 30, "to": "n3", "state": "relayed", "via": "n1", "rtt_ms": 2.5},
        {"from": "n1", "to": "n3", "state": "down"},
        {"from": "n1", "state": "direct"},  # malformed: skipped
        {"from": "n1", "to": "n2", "state": "sideways"},  # unknown state: skipped
        "junk",
    ]})
    assert m.links is not None and len(m.links) == 3
    relayed = next(lk for lk in m.links if lk.state == "relayed")
    assert (relayed.src, relayed.dst, relayed.via, relayed.rtt_ms) == ("n2", "n3", "n1", 2.5)
    detail = links_text(m, "n3").plain
    assert "n2→n3" in detail and "relayed via n1" in detail and "down" in detail
    pairs = {(p.a, p.b): p.state for p in pair_links(m.links)}
    assert pairs == {("n1", "n2"): "direct", ("n2", "n3"): "relayed", ("n1", "n3"): "down"}


def test_topology_draws_every_pair_not_a_star() -> None:
    nodes = tuple(TopoNode(n, "alive", None, n == "a", n == "a") for n in ("a", "b", "c"))
    alone = draw(TopoView(nodes, None), 40, 14).plain
    linked = draw(TopoView(nodes, tuple(pair_links(())) or None), 40, 14).plain
    assert alone == linked  # no links: only the hosts
    from meshtui.model import Link

    links = pair_links((Link("b", "c", "relayed", "a", 3.0),))
    drawn = draw(TopoView(nodes, links), 40, 14).plain
    assert sum(ch not in " \n" and "\u2800" < ch <= "\u28ff" for ch in drawn) > 5  # the b-c line


def test_backfill_then_live_stream_has_no_gap_and_no_duplicate() -> None:
    m = MeshModel()
    m.apply_backfill({
        "entries": [{"index": i, "term": 2, "at": 100.0 + i, "summary": f"kv.put k{i}"} for i in (8, 9, 10)],
        "commit_index": 10, "first_index": 8,
    })
    # Live events that raced the backfill (<= 10) are dropped; 11 continues the log.
    for index in (9, 10, 11):
        m.apply_event({"event": "consensus", "data": {"kind": "entry", "term": 2, "index": index,
                                                      "summary": f"kv.put k{index}"}}, 200.0)
    lines = [(ln.kind, ln.index) for ln in m.log]
    assert lines == [("backfill", None), ("entry", 8), ("entry", 9), ("entry", 10), ("entry", 11)]
    assert "7 earlier entries not shown" in m.log[0].text
    # A reconnect asks for what follows 11: only the gap is added.
    m.apply_backfill({"entries": [{"index": 12, "term": 3, "summary": "no-op (new leader)"}],
                      "commit_index": 12, "first_index": 12})
    assert [ln.index for ln in m.log][-2:] == [11, 12]


def test_replication_progress_and_leader_timeline() -> None:
    m = MeshModel()
    m.apply_members(members(("n1", "alive"), ("n2", "alive"), ("n3", "alive")))
    m.apply_progress({"leader": "n1", "last_index": 40, "peers": [
        {"name": "n3", "match": 30, "lag": 10, "state": "probe", "learner": True, "active": False,
         "last_contact_s": 4.2},
        {"name": "n1", "match": 40, "lag": 0, "state": "leader", "learner": False, "active": True},
        {"name": "n2", "match": 40, "lag": 0, "state": "replicate", "learner": False, "active": True,
         "last_contact_s": 0.1},
    ]})
    assert [p.name for p in m.consensus.progress] == ["n1", "n2", "n3"]  # voters, then learners
    assert m.consensus.progress[2].lag == 10 and m.consensus.progress[2].last_contact_s == 4.2
    m.apply_status({"consensus": {"term": 3, "leader": "n1"}}, now=10.0)
    m.apply_event({"event": "consensus", "data": {"kind": "leader", "term": 4, "leader": None}}, 20.0)
    m.apply_event({"event": "consensus", "data": {"kind": "leader", "term": 4, "leader": "n2"}}, 21.0)
    assert [(c.at, c.leader) for c in m.leader_changes] == [(10.0, "n1"), (20.0, None), (21.0, "n2")]
    assert [c.text for c in m.changes if c.kind == "election"] == [
        "no leader (term 4, was n1)", "n2 leads term 4",
    ]


def test_changes_feed_has_joins_deaths_and_moves() -> None:
    m = MeshModel()
    m.apply_members(members(("n1", "alive"), ("n2", "alive")))
    m.apply_event({"event": "members", "data": {"kind": "join", "member": {"name": "n9"}}}, 5.0)
    m.apply_event({"event": "members", "data": {"kind": "dead", "member": {"name": "n2"}}}, 6.0)
    m.apply_event({"event": "migrations", "data": {"task": "t5", "from": "n1", "to": "n9",
                                                   "reason": "hot-cold", "at": 7.0}}, 7.0)
    assert [(c.at, c.kind, c.text) for c in m.changes] == [
        (5.0, "alive", "n9 joined / alive"), (6.0, "dead", "n2 dead"), (7.0, "move", "t5 n1 → n9 (hot-cold)"),
    ]


def test_drain_progress_counts_tasks_leaving_the_node() -> None:
    m = MeshModel()
    m.apply_members(members(("n1", "alive"), ("n2", "alive")))
    m.apply_tasks([{"id": f"t{i}", "state": "running", "node": "n2"} for i in (1, 2)])
    op = Operation.make("drain", "n2", m, 0.0, "rid")
    assert "2 tasks move elsewhere" in op.question()
    op.sent = True
    text, fraction, done = op.progress(m, 1.0)
    assert (fraction, done) == (0.0, False) and "2 tasks still on n2" in text
    m.apply_event({"event": "migrations", "data": {"task": "t1", "from": "n2", "to": "n1",
                                                   "reason": "drain"}}, 2.0)
    m.apply_members([{"name": "n2", "draining": True}], authoritative=False)
    text, fraction, done = op.progress(m, 2.0)
    assert (fraction, done) == (0.5, False) and "t1→n1" in text
    m.apply_event({"event": "tasks", "data": {"task": {"id": "t2", "state": "succeeded"}}}, 3.0)
    text, fraction, done = op.progress(m, 3.0)
    assert done and fraction == 1.0 and text.startswith("drained") and op.done_at == 3.0


def test_transfer_progress_and_timeout() -> None:
    m = MeshModel()
    m.apply_status({"consensus": {"term": 2, "leader": "n1"}})
    op = Operation.make("transfer", "n2", m, 0.0, "rid")
    op.sent = True
    assert op.progress(m, 1.0)[2] is False
    assert op.progress(m, 100.0)[:3] == ("leader still n1 after 15s", None, True)
    other = Operation.make("transfer", "", m, 0.0, "rid")
    other.sent = True
    m.apply_status({"consensus": {"term": 3, "leader": "n3"}})
    assert other.progress(m, 1.0) == ("n3 leads (term 3)", 1.0, True)


def test_versions_are_printed() -> None:
    for module, prog in (("meshtui.cli", "meshtui"), ("agent.cli", "mesh-agent")):
        out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith(f"{prog} 0."), out


def test_attach_takes_several_targets() -> None:
    from meshtui.cli import build_parser

    args = build_parser().parse_args(["attach", "-t", "/run/a.sock", "-t", "ssh://root@b"])
    assert args.target == ["/run/a.sock", "ssh://root@b"]
    assert build_parser().parse_args(["status", "-t", "/run/a.sock"]).target == "/run/a.sock"
