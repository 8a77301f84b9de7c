"""Tasks screen: the task table, a detail pane for the selected task, and its followed logs.

Following logs is a worker loop calling ``task.logs`` with per-stream offsets;
bytes are decoded incrementally so a UTF-8 character split across two chunks
still prints, and partial lines wait for their newline.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import RichLog, Static

from meshtui.model import FINISHED_TASK_STATES, MeshModel, matches_filter
from meshtui.screens.base import AreaScreen
from meshtui.widgets.fasttable import FastTable, Row
from meshtui.widgets.render import clock, opt, task_state_text

TASK_COLUMNS = (
    ("id", "id"),
    ("state", "state"),
    ("node", "host"),
    ("epoch", "epoch"),
    ("attempts", "att"),
    ("migrations", "mig"),
    ("exit", "exit"),
    ("cmd", "cmd"),
)
ROW_FIELDS = ("id", "state", "node", "epoch", "attempts", "migrations", "exit_code")
STREAMS = ("stdout", "stderr")
LOG_POLL_IDLE = 0.5
"""Seconds between ``task.logs`` polls when nothing new arrived."""


def short_id(tid: str) -> str:
    return tid[:12]


def cmd_text(task: Mapping[str, Any]) -> str:
    cmd = task.get("cmd")
    if isinstance(cmd, list | tuple):
        return " ".join(str(c) for c in cmd)
    return opt(cmd)


def task_row(task: Mapping[str, Any]) -> Row:
    tid = str(task["id"])
    exit_code = task.get("exit_code")
    exit_text = Text(opt(exit_code), style="green" if exit_code == 0 else "red")
    return (
        tid,
        (
            short_id(tid),
            task_state_text(str(task.get("state", ""))),
            opt(task.get("node")),
            opt(task.get("epoch")),
            opt(task.get("attempts")),
            opt(task.get("migrations")),
            exit_text if exit_code is not None else "-",
            cmd_text(task),
        ),
    )


def task_haystack(task: Mapping[str, Any]) -> str:
    return f"{task['id']} {task.get('state', '')} {task.get('node', '')} {cmd_text(task)}"


class TasksScreen(AreaScreen):
    AREA = "tasks"

    def __init__(self) -> None:
        super().__init__()
        self._following: str | None = None
        self._records: dict[str, dict[str, Any]] = {}

    def compose_body(self) -> Iterable[Widget]:
        yield Static(id="task-counts")
        with Horizontal(id="tasks-body"):
            yield FastTable(TASK_COLUMNS, id="tasks")
            with Vertical(id="task-side"):
                yield Static(id="task-detail")
                yield RichLog(id="task-logs", max_lines=5_000, wrap=True, markup=False)

    def draw(self, model: MeshModel, force: bool) -> None:
        if not self.changed(model, "tasks", "migrations", force=force):
            return
        counts = Text(no_wrap=True)
        # Cluster-wide counts come from `status` (DESIGN.md: queued/running/done/failed).
        for state, style in (
            ("queued", "grey70"),
            ("running", "bold cyan"),
            ("done", "green"),
            ("failed", "bold red"),
        ):
            counts.append(f" {state} ", style="grey70")
            counts.append(str(model.task_counts.get(state, 0)), style=style)
            counts.append("  │", style="grey42")
        counts.append(f" {len(model.tasks)} listed", style="grey50")
        self.query_one("#task-counts", Static).update(counts)
        # Live tasks first, then finished ones; ids order within each group, so the
        # table does not reshuffle as events and polls interleave.
        ordered = sorted(
            model.tasks.values(),
            key=lambda t: (t.get("state") in FINISHED_TASK_STATES, str(t["id"])),
        )
        rows = [task_row(t) for t in ordered if matches_filter(task_haystack(t), self.query_text)]
        table = self.query_one("#tasks", FastTable)
        table.sync(rows)
        self._show_detail(model, table.selected_key)

    def _show_detail(self, model: MeshModel, tid: str | None) -> None:
        row = model.tasks.get(tid) if tid else None
        if row is None or tid is None:
            self.set_static("#task-detail", Text("no task selected", style="grey50"))
            return
        # The row (live, from events) wins over the fuller task.get record.
        task = {**self._records.get(tid, {}), **row}
        moves = [m for m in model.migrations if m.task == tid][-3:]
        key = (tid, repr(sorted(task.items(), key=lambda kv: kv[0])), tuple(moves))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="grey70", justify="right")
        grid.add_column()
        for name in ROW_FIELDS:
            value = task.get(name)
            grid.add_row(name, task_state_text(str(value)) if name == "state" else opt(value))
        grid.add_row("cmd", cmd_text(task))
        for name, value in sorted(task.items()):
            if name in ROW_FIELDS or name in ("cmd", "argv", "shell", "id", "node_name"):
                continue
            if name.endswith("_at") and isinstance(value, int | float):
                grid.add_row(name, clock(value))
            elif "rss" in name and isinstance(value, int | float):
                grid.add_row(name, f"{value / 2**20:.1f} MiB")
            elif isinstance(value, float):
                grid.add_row(name, f"{value:.3f}")
            elif isinstance(value, str | int) and not isinstance(value, bool):
                grid.add_row(name, str(value))
            elif isinstance(value, bool):
                grid.add_row(name, "yes" if value else "no")
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                grid.add_row(name, ", ".join(value))
        for m in moves:
            grid.add_row("moved", f"{clock(m.at)} {m.src} → {m.dst} ({m.reason}, e{m.epoch})")
        self.set_static("#task-detail", grid, key=key)

    async def _fetch_record(self, tid: str) -> None:
        """``task.get``: the full record (strategy, caps, times...) for the detail pane."""
        client = self.mesh.client
        if client is None:
            return
        try:
            record = await client.call("task.get", id=tid)
        except Exception:
            return  # the row alone is still shown; the record is a bonus
        if isinstance(record, Mapping):
            self._records[tid] = {k: v for k, v in record.items() if k != "node"}
            if len(self._records) > 256:
                self._records.pop(next(iter(self._records)))
            self._show_detail(self.mesh.model, self.query_one("#tasks", FastTable).selected_key)

    def on_fast_table_row_highlighted(self, event: FastTable.RowHighlighted) -> None:
        tid = event.key
        self._show_detail(self.mesh.model, tid)
        if tid is not None and tid != self._following:
            self._following = tid
            self.follow_logs(tid)

    @work(exclusive=True, group="task-logs")
    async def follow_logs(self, tid: str) -> None:
        """Poll ``task.logs`` for ``tid`` until both streams report eof."""
        await self._fetch_record(tid)
        log = self.query_one("#task-logs", RichLog)
        log.clear()
        log.write(Text(f"── logs of {tid} ──", style="bold #87afd7"))
        offsets = dict.fromkeys(STREAMS, 0)
        decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in STREAMS}
        partial = dict.fromkeys(STREAMS, "")
        eof = dict.fromkeys(STREAMS, False)
        while not all(eof.values()):
            client = self.mesh.client
            if client is None or not self.is_current:
                await asyncio.sleep(1.0)  # offline, or another screen is showing
                continue
            progressed = False
            for stream in STREAMS:
                if eof[stream]:
                    continue
                try:
                    reply = await client.call("task.logs", id=tid, offset=offsets[stream], stream=stream)
                except (OSError, EOFError) as exc:
                    log.write(Text(f"(connection lost: {exc}; retrying)", style="yellow"))
                    await asyncio.sleep(1.0)
                    break
                except Exception as exc:  # an error reply (not_found, ...) ends following
                    log.write(Text(f"(logs unavailable: {exc})", style="red"))
                    return
                if not isinstance(reply, Mapping):
                    log.write(Text(f"(unexpected task.logs reply {reply!r})", style="red"))
                    return
                data = reply.get("data") or b""
                if isinstance(data, str):
                    data = data.encode()
                offsets[stream] = int(reply.get("offset", offsets[stream] + len(data)))
                eof[stream] = bool(reply.get("eof", False))
                text = partial[stream] + decoders[stream].decode(data, final=eof[stream])
                *lines, partial[stream] = text.split("\n")
                if eof[stream] and partial[stream]:
                    lines.append(partial[stream])
                    partial[stream] = ""
                style = "red" if stream == "stderr" else ""
                for line in lines:
                    log.write(Text(line, style=style))
                progressed = progressed or bool(data)
            if not progressed and not all(eof.values()):
                await asyncio.sleep(LOG_POLL_IDLE)
        log.write(Text("── end of output ──", style="grey50"))
        await self._fetch_record(tid)
