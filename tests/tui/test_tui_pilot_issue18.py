"""Issue 18 pilot tests on the replay client: confirmed operations, sorting keys, and
switching between clusters (the app, model and screens are real)."""

from __future__ import annotations

import copy
import json
from typing import Any

from meshtui.screens.dialogs import ConfirmScreen, NodePicker
from meshtui.widgets.fasttable import FastTable
from tui.replay_client import RECORDINGS, ReplayClient
from tui.tui_helpers import make_app, row_keys, wait_for

SNAPSHOTS = json.loads((RECORDINGS / "mesh5" / "snapshots.json").read_text())


def client(**kwargs: Any) -> ReplayClient:
    return ReplayClient([copy.deepcopy(SNAPSHOTS[-1])], [], **kwargs)


async def test_cancel_asks_first_and_no_sends_nothing() -> None:
    rc = client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        await wait_for(pilot, lambda: table.row_count == 6)
        running = next(k for k in row_keys(table) if app.model.tasks[k]["state"] == "running")
        table.move_cursor(row_keys(table).index(running))
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert not any(m == "task.cancel" for m, _ in rc.calls)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: any(m == "task.cancel" for m, _ in rc.calls))
        params = next(p for m, p in rc.calls if m == "task.cancel")
        assert params["id"] == running and len(params["rid"]) == 32
        assert app.operations[-1].sent and app.operations[-1].title() == f"cancel task {running[:12]}"


async def test_transfer_leadership_to_the_selected_member() -> None:
    rc = client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.screen.query_one("#members", FastTable)
        await wait_for(pilot, lambda: table.row_count == 5 and app.model.consensus.leader == "n3")
        table.move_cursor(row_keys(table).index("n2"))
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")
        await wait_for(pilot, lambda: ("leader.transfer", {"to": "n2"}) in rc.calls)
        text, _, done = app.operations[-1].progress(app.model, app.now())
        assert not done and "waiting for n2" in text


async def test_sort_keys_cycle_columns_and_reverse() -> None:
    rc = client()
    app = make_app(rc)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        await wait_for(pilot, lambda: table.row_count == 6)
        await pilot.press("s")  # by id
        ids = row_keys(table)
        assert ids == sorted(ids)
        await pilot.press("S")  # reversed
        assert row_keys(table) == list(reversed(ids))
        assert table.columns[0][1] == "id ▼"
        await pilot.press("s")  # by state
        assert table.columns[1][1] == "state ▲" and table.columns[0][1] == "id"


async def test_x_switches_cluster_and_drops_the_old_connection() -> None:
    first = client()
    other = copy.deepcopy(SNAPSHOTS[0])
    other["status"]["node"] = "n5"
    second = ReplayClient([other], [])
    app = make_app(first, clusters=[("replay://other", second.factory)])
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: app.model.node == "n1" and first.subscribed.is_set())
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, NodePicker))
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.model.node == "n5" and second.subscribed.is_set())
        assert app.target_label == "replay://other" and first.closed >= 1
        first.feed({"event": "members", "data": {"kind": "dead", "member": {"name": "n1"}}})
        await pilot.pause(0.3)
        assert app.model.members["n1"].state == "alive"  # the old cluster's events are not folded
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, NodePicker))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.model.node == "n1" and app.target_label == "replay://mesh5")
