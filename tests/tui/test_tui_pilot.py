"""Pilot tests of the TUI against the replay client (real app, model, screens)."""

from __future__ import annotations

import copy
import json
from typing import Any

from textual.command import CommandPalette
from textual.widgets import RichLog, Static

from meshtui.screens.dialogs import HelpScreen, NodePicker
from meshtui.widgets.bars import Banner, NavBar
from meshtui.widgets.fasttable import FastTable
from meshtui.widgets.logview import LogView
from tui.replay_client import RECORDINGS, ReplayClient
from tui.tui_helpers import cell, log_text, make_app, row_keys, static_text, wait_for

SNAPSHOTS = json.loads((RECORDINGS / "mesh5" / "snapshots.json").read_text())


def first_snapshot_client(**kwargs: Any) -> ReplayClient:
    """The mesh as it was before the recorded events: all five alive, n2 leads."""
    return ReplayClient([copy.deepcopy(SNAPSHOTS[0])], [], **kwargs)


def member(name: str, state: str) -> dict[str, Any]:
    row = next(r for r in SNAPSHOTS[0]["members"] if r["name"] == name)
    return {**row, "state": state}


async def test_member_table_fills_from_status() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.screen.query_one("#members", FastTable)
        await wait_for(pilot, lambda: table.row_count == 5)
        assert row_keys(table) == ["n1", "n2", "n3", "n4", "n5"]
        assert cell(table, "n2", "addr") == "127.0.0.1:7902"
        assert cell(table, "n2", "state") == "alive"
        assert cell(table, "n2", "name") == "n2 ★"  # the leader
        assert cell(table, "n4", "caps") == "gpu"


async def test_member_turning_suspect_then_dead_changes_its_row() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.screen.query_one("#members", FastTable)
        await wait_for(pilot, lambda: table.row_count == 5)
        rc.feed({"event": "members", "data": {"kind": "suspect", "member": {"name": "n4"}}})
        await wait_for(pilot, lambda: cell(table, "n4", "state") == "suspect")
        rc.feed({"event": "members", "data": {"kind": "dead", "member": member("n4", "dead")}})
        await wait_for(pilot, lambda: cell(table, "n4", "state") == "dead")
        assert cell(table, "n3", "state") == "alive"


async def test_task_appears_and_finishes() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.subscribed.is_set())
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        task = {
            "id": "tA",
            "state": "queued",
            "node": None,
            "epoch": 1,
            "attempts": 1,
            "migrations": 0,
            "exit_code": None,
            "cmd": ["sleep", "1"],
        }
        rc.feed({"event": "tasks", "data": {"kind": "submitted", "task": task}})
        await wait_for(pilot, lambda: row_keys(table) == ["tA"])
        assert cell(table, "tA", "state") == "queued"
        assert cell(table, "tA", "cmd") == "sleep 1"
        rc.feed(
            {
                "event": "tasks",
                "data": {"kind": "started", "task": {**task, "state": "running", "node": "n3"}},
            }
        )
        await wait_for(pilot, lambda: cell(table, "tA", "state") == "running")
        assert cell(table, "tA", "node") == "n3"
        rc.feed(
            {
                "event": "tasks",
                "data": {
                    "kind": "finished",
                    "task": {"id": "tA", "state": "succeeded", "exit_code": 0},
                },
            }
        )
        await wait_for(pilot, lambda: cell(table, "tA", "state") == "succeeded")
        assert cell(table, "tA", "exit") == "0"
        assert cell(table, "tA", "node") == "n3"  # partial rows merge into what is known


async def test_leader_change_shows_in_consensus_log_and_header() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.subscribed.is_set())
        await pilot.press("2")
        log = app.screen.query_one("#consensus-log", LogView)
        rc.feed(
            {
                "event": "consensus",
                "data": {"kind": "election", "term": 4, "summary": "n3 started an election"},
            },
            {"event": "consensus", "data": {"kind": "leader", "term": 4, "leader": "n3"}},
        )
        await wait_for(pilot, lambda: "leader is n3" in log_text(log))
        assert "n3 started an election" in log_text(log)
        assert app.model.consensus.leader == "n3"
        assert app.model.consensus.term == 4
        header = static_text(app.screen.query_one("#consensus-header", Static))
        assert "leader  n3" in header
        assert "term  4" in header


async def test_filter_narrows_members_and_log() -> None:
    rc = ReplayClient.load("mesh5")
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.queue.empty())
        table = app.screen.query_one("#members", FastTable)
        await wait_for(pilot, lambda: table.row_count == 5)
        await pilot.press("slash", "g", "p", "u")
        await wait_for(pilot, lambda: row_keys(table) == ["n2", "n4"])
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 5)
        await pilot.press("2")
        log = app.screen.query_one("#consensus-log", LogView)
        await wait_for(pilot, lambda: "kv.put" in log_text(log))
        await pilot.press("slash", *"voted")
        await wait_for(pilot, lambda: "kv.put" not in log_text(log))
        lines = log_text(log).splitlines()
        assert len(lines) == 2 and all("voted for n3" in line for line in lines)


async def test_help_opens_and_closes() -> None:
    app = make_app(first_snapshot_client())
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_palette_opens_and_drains_a_node() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.subscribed.is_set() and len(app.model.members) == 5)
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"drain n2")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: ("node.drain", {"node": "n2"}) in rc.calls)


async def test_palette_submit_prompts_for_a_command_line() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.subscribed.is_set())
        await pilot.press("colon")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"submit")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: app.screen.query("#prompt").first() is not None if app.screen.query("#prompt") else False,
        )
        await pilot.press(*"echo 'hello mesh'", "enter")
        await wait_for(pilot, lambda: any(m == "task.submit" for m, _ in rc.calls))
        params = next(p for m, p in rc.calls if m == "task.submit")
        assert params["argv"] == ["echo", "hello mesh"]
        assert len(params["rid"]) == 32


async def test_disconnect_banner_appears_and_clears_after_reconnect() -> None:
    rc = first_snapshot_client()
    app = make_app(rc, backoff=(0.3, 0.6))
    async with app.run_test(size=(140, 40)) as pilot:
        banner = app.screen.query_one(Banner)
        await wait_for(pilot, lambda: rc.subscribed.is_set() and not banner.display)
        rc.drop(ConnectionError("replay: link dropped"))
        await wait_for(pilot, lambda: banner.display)
        text = static_text(banner, width=200)
        assert "disconnected — reconnecting in 0.3s…" in text
        assert "link dropped" in text
        await wait_for(pilot, lambda: rc.connects == 2 and not banner.display)
        assert app.model.connection.state == "connected"
        assert rc.closed == 1


async def test_initial_connect_failures_back_off_then_connect() -> None:
    rc = first_snapshot_client()
    rc.fail_connects = 2
    app = make_app(rc, backoff=(0.05, 0.08))
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: app.model.connection.state == "connected")
        assert rc.connects == 3


async def test_task_logs_are_followed() -> None:
    rc = ReplayClient.load("mesh5", log_chunk=16)
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.queue.empty() and len(app.model.tasks) == 6)
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        await wait_for(pilot, lambda: table.row_count == 6)
        table.focus()
        index = row_keys(table).index("t05c0ffeec0ffee")
        table.move_cursor(row=index)
        log = app.screen.query_one("#task-logs", RichLog)
        await wait_for(pilot, lambda: "end of output" in log_text(log))
        text = log_text(log)
        assert "starting burn(5)" in text
        assert "ValueError: 5" in text


async def test_tab_and_number_keys_switch_screens() -> None:
    app = make_app(first_snapshot_client())
    async with app.run_test(size=(140, 40)) as pilot:
        assert app.current_mode == "mesh"
        await pilot.press("tab")
        assert app.current_mode == "consensus"
        await pilot.press("shift+tab", "shift+tab")
        assert app.current_mode == "metrics"
        await pilot.press("shift+tab")
        assert app.current_mode == "migrations"
        await pilot.press("3")
        assert app.current_mode == "tasks"


class FakeDemo:
    def __init__(self) -> None:
        self.killed: list[str] = []

    def names(self) -> list[str]:
        return ["n1", "n2", "n3"]

    def kill(self, name: str) -> None:
        self.killed.append(name)

    async def restart(self, name: str) -> None:
        self.killed.remove(name)


async def test_demo_keys_kill_and_restart_a_chosen_node() -> None:
    demo = FakeDemo()
    app = make_app(first_snapshot_client(), demo_controls=demo)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(app.screen, NodePicker))
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: demo.killed == ["n2"])
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, NodePicker))
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: demo.killed == [])


async def test_clicking_a_screen_name_switches_to_it() -> None:
    app = make_app(first_snapshot_client())
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause(0.2)
        # " meshtui " + " " + " 1 Mesh " + " " puts " 2 Consensus " at column 19.
        await pilot.click(NavBar, offset=(22, 0))
        await wait_for(pilot, lambda: app.current_mode == "consensus")


async def test_overflow_event_triggers_a_fresh_snapshot() -> None:
    rc = first_snapshot_client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: rc.subscribed.is_set())
        polls = sum(1 for method, _ in rc.calls if method == "status")
        rc.feed({"event": "overflow", "data": {"dropped": 12}})
        await wait_for(pilot, lambda: sum(1 for m, _ in rc.calls if m == "status") == polls + 1)
        assert app.model.events_seen == 0  # the marker is not folded as an event
