"""Snapshot tests: each screen rendered from the mesh5 recording at a fixed size and clock.

Update after an intended change with ``pytest tests/tui --snapshot-update`` and look
at the SVGs in ``__snapshots__`` before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import RichLog

from meshtui.screens.dialogs import HelpScreen
from meshtui.widgets.fasttable import FastTable
from tui.replay_client import ReplayClient
from tui.tui_helpers import log_text, make_app, row_keys, wait_for

SIZE = (150, 42)


async def quiet(pilot: Pilot[None], app: Any) -> None:
    """Wait until no redraw is pending (app timer or a screen's rate-limit trailer)."""
    await wait_for(
        pilot,
        lambda: not app._redraw_scheduled and not getattr(app.screen, "_trailing", ()),
        timeout=10,
    )
    await pilot.pause(0.2)  # the compositor paints the last redraw


def settled_app() -> tuple[Any, Callable[[Pilot[None]], Awaitable[None]]]:
    """An app on the full recording, and a run_before that waits for it to settle."""
    rc = ReplayClient.load("mesh5", hold_last=True, ordered=True)
    app = make_app(rc, status_interval=0.001)

    async def settle(pilot: Pilot[None]) -> None:
        last = len(rc.snapshots) - 1
        await wait_for(pilot, lambda: rc.queue.empty() and rc.cursor == last, timeout=10)
        await wait_for(pilot, lambda: app.model.consensus.leader == "n3")
        await quiet(pilot, app)

    return app, settle


def test_mesh_screen(snap_compare: Any) -> None:
    app, settle = settled_app()
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_consensus_screen(snap_compare: Any) -> None:
    app, settle = settled_app()

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("2")
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_tasks_screen_with_followed_logs(snap_compare: Any) -> None:
    app, settle = settled_app()

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("3")
        table = app.screen.query_one("#tasks", FastTable)
        await wait_for(pilot, lambda: table.row_count == 6)
        table.move_cursor(row=row_keys(table).index("t00c0ffeec0ffee"))
        logs = app.screen.query_one("#task-logs", RichLog)
        await wait_for(pilot, lambda: "end of output" in log_text(logs))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_migrations_screen(snap_compare: Any) -> None:
    app, settle = settled_app()

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("4")
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare: Any) -> None:
    app, settle = settled_app()

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await quiet(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_no_quorum_banner(snap_compare: Any) -> None:
    app, settle = settled_app()

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        app.model.apply_event({"event": "members", "data": {"kind": "partitioned"}}, 0.0)
        app._schedule_redraw()
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(110, 20), run_before=run_before)
