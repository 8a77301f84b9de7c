"""Small helpers for pilot tests: waiting on a condition, reading tables and logs."""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable

from rich.console import Console
from rich.text import Text
from support.wait import wait_until_async
from textual.pilot import Pilot
from textual.widgets import RichLog, Static

from meshtui.app import MeshApp
from meshtui.widgets.fasttable import FastTable
from meshtui.widgets.logview import LogView
from tui.replay_client import ReplayClient

FIXED_NOW = 1_790_000_100.0


def make_app(rc: ReplayClient, **kwargs: object) -> MeshApp:
    options: dict[str, object] = {
        "clock": lambda: FIXED_NOW,
        "status_interval": 3600.0,
        "backoff": (0.05, 0.2),
    }
    options.update(kwargs)
    return MeshApp(rc.factory, "replay://mesh5", **options)  # type: ignore[arg-type]


async def wait_for(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Pause the pilot until ``cond()`` holds; fail naming the condition's source otherwise.

    ``support.wait.wait_until_async`` with ``pilot.pause`` between looks, so
    the app processes its messages and timers while the test waits.  The
    deadline is wall-clock (the old helper counted pauses, which stretched
    under load), so the default is 10 s: a bound for failing, not a speed test.
    """
    await wait_until_async(_source_of(cond), cond, timeout, 0.02, sleep=pilot.pause)


def _source_of(cond: Callable[[], object]) -> str:
    """The source text of ``cond`` (usually the test's ``wait_for(pilot, lambda: ...)`` line)."""
    try:
        return inspect.getsource(cond).strip()
    except (OSError, TypeError):
        return repr(cond)


def cell(table: FastTable, row: str, column: str) -> str:
    value = table.get_cell(row, column)
    return value.plain if isinstance(value, Text) else value


def row_keys(table: FastTable) -> list[str]:
    return table.row_keys


def log_text(log: RichLog | LogView) -> str:
    if isinstance(log, LogView):
        return "\n".join(log.plain_lines())
    return "\n".join(line.text for line in log.lines)


def static_text(widget: Static, width: int = 120) -> str:
    """Plain text of what a Static shows (Rich renderables included)."""
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(widget.content)
    return console.export_text()
