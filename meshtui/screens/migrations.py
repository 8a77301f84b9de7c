"""Migrations screen: a newest-first timeline of task moves with the reason for each."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

from meshtui.model import MeshModel, Migration, matches_filter
from meshtui.screens.base import AreaScreen
from meshtui.widgets.fasttable import FastTable, Row
from meshtui.widgets.render import REASON_STYLE, clock

MIGRATION_COLUMNS = (
    ("at", "time"),
    ("task", "task"),
    ("move", "from → to"),
    ("reason", "reason"),
    ("epoch", "epoch"),
)


def migration_row(seq: int, mig: Migration) -> Row:
    move = Text()
    move.append(mig.src or "?", style="bold red" if mig.reason == "failover" else "bold")
    move.append(" → ", style="grey50")
    move.append(mig.dst or "?", style="bold green")
    reason = Text(mig.reason, style=REASON_STYLE.get(mig.reason, "white"))
    return (str(seq), (clock(mig.at), mig.task[:12], move, reason, str(mig.epoch)))


class MigrationsScreen(AreaScreen):
    AREA = "migrations"

    def compose_body(self) -> Iterable[Widget]:
        yield Static(id="migration-summary")
        yield Static(id="demo-note")
        yield FastTable(MIGRATION_COLUMNS, id="migrations")

    def on_mount(self) -> None:
        from meshtui.screens.mesh import show_demo_note

        show_demo_note(self)
        super().on_mount()

    def draw(self, model: MeshModel, force: bool) -> None:
        if not self.changed(model, "migrations", force=force):
            return
        reasons = Counter(m.reason for m in model.migrations)
        summary = Text(no_wrap=True)
        summary.append(f" {len(model.migrations)} moves ", style="bold")
        if model.migrations:
            last = model.migrations[-1].at
            summary.append(f" {model.migrations_per_minute(last)} in the last minute ", "grey70")
        for reason, count in sorted(reasons.items()):
            summary.append(f" {reason} ", style=REASON_STYLE.get(reason, "white"))
            summary.append(str(count), style="bold")
        self.query_one("#migration-summary", Static).update(summary)
        # Row keys are positions counted from the oldest kept move, so they stay stable
        # while new moves arrive and the newest is always on top.
        total = len(model.migrations)
        rows = [
            migration_row(total - i, m)
            for i, m in enumerate(reversed(model.migrations))
            if matches_filter(f"{m.task} {m.src} {m.dst} {m.reason}", self.query_text)
        ]
        self.query_one("#migrations", FastTable).sync(rows)
