"""Snapshot tests for issue 18's screen states, from a stream recorded on a real mesh.

``fixtures/mesh3`` was recorded by ``record_mesh.py`` from three real agents
(a multi-line command, a failing task, a drain, the leader SIGKILLed and a new
election), attached to a follower that then became the leader, so its
``consensus.progress`` and ``status.links`` are real.  The hand-written addition,
made here so the recording stays as recorded: a relayed and a down link to the
dead leader (a loopback mesh has no broken paths to relay around).  Update with
``--snapshot-update`` and look at the SVGs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import RichLog

from meshtui.widgets.fasttable import FastTable
from meshtui.widgets.logview import LogView
from tui.replay_client import ReplayClient
from tui.test_tui_snapshots import quiet
from tui.tui_helpers import log_text, make_app, row_keys, wait_for

SIZE = (150, 42)
FIXTURE = Path(__file__).parent / "fixtures" / "mesh3"
SNAPSHOTS: list[dict[str, Any]] = json.loads((FIXTURE / "snapshots.json").read_text())
EVENTS = [json.loads(line) for line in (FIXTURE / "events.jsonl").read_text().splitlines()]
LOGS: dict[str, dict[str, str]] = json.loads((FIXTURE / "logs.json").read_text())
LAST = SNAPSHOTS[-1]
ATTACHED = str(LAST["status"]["node"])
NAMES = sorted(m["name"] for m in LAST["status"]["members"])
DEAD = next(m["name"] for m in LAST["status"]["members"] if m["state"] == "dead")
OTHER = next(n for n in NAMES if n not in (ATTACHED, DEAD))
NEW_LEADER = str(LAST["status"]["consensus"]["leader"])


def task_where(pred: Callable[[dict[str, Any]], bool]) -> str:
    return next(str(t["id"]) for t in LAST["task.list"] if pred(t))


MULTILINE = task_where(lambda t: "multi-line command" in str(t.get("cmd")))
FAILED = task_where(lambda t: t["state"] == "failed")


def with_additions(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recording plus hand-written links (see module doc): the recorded mesh had only
    direct links, so a relayed one (via the attached host) and a down one are added."""
    out = copy.deepcopy(snapshots)
    for snap in out[-2:]:
        links = [row for row in snap["status"].get("links") or [] if DEAD not in (row["from"], row["to"])]
        links += [
            {"from": OTHER, "to": DEAD, "state": "relayed", "via": ATTACHED, "rtt_ms": 1.8},
            {"from": ATTACHED, "to": DEAD, "state": "down", "via": None, "rtt_ms": None},
        ]
        snap["status"]["links"] = links
    return out


def settled(rc: ReplayClient, **kwargs: Any) -> tuple[Any, Callable[[Pilot[None]], Awaitable[None]]]:
    app = make_app(rc, status_interval=0.001, **kwargs)

    async def settle(pilot: Pilot[None]) -> None:
        last = len(rc.snapshots) - 1
        await wait_for(pilot, lambda: rc.queue.empty() and rc.cursor == last, timeout=10)
        await wait_for(pilot, lambda: app.model.consensus.leader == NEW_LEADER)
        await quiet(pilot, app)

    return app, settle


def recorded(**kwargs: Any) -> ReplayClient:
    return ReplayClient(with_additions(SNAPSHOTS), copy.deepcopy(EVENTS), copy.deepcopy(LOGS),
                        hold_last=True, ordered=True, **kwargs)


def test_mesh_dead_leader_has_no_role_and_links_show_relayed(snap_compare: Any) -> None:
    app, settle = settled(recorded())

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        table = app.screen.query_one("#members", FastTable)
        table.move_cursor(row_keys(table).index(OTHER))  # its links, with RTT, under the topology
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_tasks_multiline_command_on_one_line_full_in_detail(snap_compare: Any) -> None:
    app, settle = settled(recorded())

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        await wait_for(pilot, lambda: MULTILINE in row_keys(table))
        table.move_cursor(row_keys(table).index(MULTILINE))
        logs = app.screen.query_one("#task-logs", RichLog)
        await wait_for(pilot, lambda: "end of output" in log_text(logs))
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_tasks_combined_log_tail_of_marked_tasks(snap_compare: Any) -> None:
    app, settle = settled(recorded())

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        await wait_for(pilot, lambda: table.row_count >= 3)
        for tid in row_keys(table)[-3:]:
            table.move_cursor(row_keys(table).index(tid))
            await pilot.press("space")
        logs = app.screen.query_one("#task-logs", RichLog)
        await wait_for(pilot, lambda: "end of output" in log_text(logs))
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_failed_task_to_its_logs_with_one_key(snap_compare: Any) -> None:
    app, settle = settled(recorded())

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("3", "f")
        logs = app.screen.query_one("#task-logs", RichLog)
        await wait_for(pilot, lambda: "end of output" in log_text(logs) and FAILED in log_text(logs))
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_consensus_backfill_replication_and_leader_timeline(snap_compare: Any) -> None:
    app, settle = settled(recorded())

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("2")
        await quiet(pilot, app)
        log = app.screen.query_one("#consensus-log", LogView)
        assert log.plain_lines()[0].split()[2] == "#1"  # the backfill starts the log
        log.scroll_home(animate=False)  # show it: the entries committed before attaching
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_drain_is_confirmed_then_shows_progress(snap_compare: Any) -> None:
    app, settle = settled(recorded())

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        table = app.screen.query_one("#members", FastTable)
        table.move_cursor(row_keys(table).index(OTHER))
        await pilot.press("d")
        await pilot.pause(0.2)
        await pilot.press("y")
        await wait_for(pilot, lambda: bool(app.operations) and app.operations[-1].sent)
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_switching_between_two_clusters(snap_compare: Any) -> None:
    first = ReplayClient.load("mesh5", hold_last=True)
    second = recorded()
    app = make_app(first, status_interval=0.001, clusters=[("replay://mesh3", second.factory)])

    async def run_before(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: app.model.consensus.leader == "n3")
        await pilot.press("x")
        await pilot.pause(0.2)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.target_label == "replay://mesh3")
        last = len(second.snapshots) - 1
        await wait_for(pilot, lambda: second.queue.empty() and second.cursor == last, timeout=10)
        await wait_for(pilot, lambda: app.model.consensus.leader == NEW_LEADER)
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
