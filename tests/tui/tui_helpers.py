"""Small helpers for pilot tests: waiting on a condition, reading tables and logs."""

from __future__ import annotations

import io
from collections.abc import Callable

from replay_client import ReplayClient
from rich.console import Console
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import RichLog, Static

from meshtui.app import MeshApp
from meshtui.widgets.fasttable import FastTable
from meshtui.widgets.logview import LogView

FIXED_NOW = 1_790_000_100.0


def make_app(rc: ReplayClient, **kwargs: object) -> MeshApp:
    options: dict[str, object] = {
        "clock": lambda: FIXED_NOW,
        "status_interval": 3600.0,
        "backoff": (0.05, 0.2),
    }
    options.update(kwargs)
    return MeshApp(rc.factory, "replay://mesh5", **options)  # type: ignore[arg-type]


async def wait_for(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Pause the pilot until ``cond()`` holds; fail with the condition's source otherwise."""
    steps = int(timeout / 0.02)
    for _ in range(steps):
        if cond():
            return
        await pilot.pause(0.02)
    assert cond(), f"condition not met within {timeout}s"


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
