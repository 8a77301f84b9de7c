"""Tasks screen: the task table, a detail pane for the selected task, and a log tail.

Rows sort naturally by id (``t2`` before ``t10``) with live tasks first; ``s``
sorts by the next column and ``S`` reverses.  A command is shown on one line
(newlines as ``⏎``); the detail pane has it in full.  ``space`` marks tasks:
the log pane then tails every marked task at once, each line prefixed with its
task and host (with nothing marked it follows the highlighted task).  ``f``
jumps to the next failed task with its logs full width; ``l`` toggles that.

Following logs is a worker loop calling ``task.logs`` with per-task, per-stream
offsets; bytes are decoded incrementally so a UTF-8 character split across two
chunks still prints, and partial lines wait for their newline.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import RichLog, Static

from meshtui.model import FINISHED_TASK_STATES, MeshModel, matches_filter, natural_key, one_line
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
MAX_TAILED = 16
"""Marked tasks tailed at once (each costs two ``task.logs`` calls per poll)."""
_STATE_ORDER = {
    s: i for i, s in enumerate(("running", "assigned", "queued", "failed", "lost", "cancelled", "succeeded"))
}


def short_id(tid: str) -> str:
    return tid[:12]


def cmd_text(task: Mapping[str, Any]) -> str:
    """The command in full (newlines kept)."""
    cmd = task.get("cmd")
    if isinstance(cmd, list | tuple):
        return " ".join(str(c) for c in cmd)
    return opt(cmd)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -1.0


def _id_key(t: Mapping[str, Any]) -> Any:
    return natural_key(str(t["id"]))


SORT_KEYS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "id": _id_key,
    "state": lambda t: (_STATE_ORDER.get(str(t.get("state")), 99), natural_key(str(t["id"]))),
    "node": lambda t: (natural_key(str(t.get("node") or "~")), natural_key(str(t["id"]))),
    "epoch": lambda t: (_number(t.get("epoch")), natural_key(str(t["id"]))),
    "attempts": lambda t: (_number(t.get("attempts")), natural_key(str(t["id"]))),
    "migrations": lambda t: (_number(t.get("migrations")), natural_key(str(t["id"]))),
    "exit": lambda t: (_number(t.get("exit_code")), natural_key(str(t["id"]))),
    "cmd": lambda t: (one_line(cmd_text(t)).lower(), natural_key(str(t["id"]))),
}


def sort_tasks(tasks: Iterable[Mapping[str, Any]], column: str | None, reverse: bool = False) -> list[Any]:
    """``column`` None: live tasks first, then finished, each by natural id."""
    if column is None:
        return sorted(
            tasks, key=lambda t: (t.get("state") in FINISHED_TASK_STATES, _id_key(t)), reverse=reverse
        )
    return sorted(tasks, key=SORT_KEYS[column], reverse=reverse)


def task_row(task: Mapping[str, Any], marked: bool = False) -> Row:
    tid = str(task["id"])
    exit_code = task.get("exit_code")
    exit_text = Text(opt(exit_code), style="green" if exit_code == 0 else "red")
    shown_id: str | Text = short_id(tid)
    if marked:
        shown_id = Text("● ", style="bold magenta") + Text(short_id(tid))
    return (
        tid,
        (
            shown_id,
            task_state_text(str(task.get("state", ""))),
            opt(task.get("node")),
            opt(task.get("epoch")),
            opt(task.get("attempts")),
            opt(task.get("migrations")),
            exit_text if exit_code is not None else "-",
            one_line(cmd_text(task)),
        ),
    )


def task_haystack(task: Mapping[str, Any]) -> str:
    return f"{task['id']} {task.get('state', '')} {task.get('node', '')} {one_line(cmd_text(task))}"


@dataclass
class _Tail:
    """One followed task's read position in each stream."""

    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    decoders: dict[str, codecs.IncrementalDecoder] = field(
        default_factory=lambda: {s: codecs.getincrementaldecoder("utf-8")("replace") for s in STREAMS}
    )
    partial: dict[str, str] = field(default_factory=lambda: dict.fromkeys(STREAMS, ""))
    eof: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(STREAMS, False))
    gone: bool = False
    host: str = ""
    """The host shown in the prefix: the model's, else the task record's (``task.get``)."""

    @property
    def finished(self) -> bool:
        return self.gone or all(self.eof.values())

    def feed(self, stream: str, reply: Mapping[str, Any]) -> list[str]:
        """Fold one ``task.logs`` reply; the complete lines it gave."""
        data = reply.get("data") or b""
        if isinstance(data, str):
            data = data.encode()
        self.offsets[stream] = int(reply.get("offset", self.offsets[stream] + len(data)))
        self.eof[stream] = bool(reply.get("eof", False))
        text = self.partial[stream] + self.decoders[stream].decode(data, final=self.eof[stream])
        *lines, self.partial[stream] = text.split("\n")
        if self.eof[stream] and self.partial[stream]:
            lines.append(self.partial[stream])
            self.partial[stream] = ""
        return lines


class TasksScreen(AreaScreen):
    AREA = "tasks"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "mark", "Mark"),
        Binding("s", "sort(1)", "Sort"),
        Binding("S", "sort(-1)", "Reverse", show=False),
        Binding("f", "next_failed", "Failed→logs"),
        Binding("l", "toggle_logs", "Logs"),
        Binding("c", "cancel_task", "Cancel"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._following: tuple[str, ...] = ()
        self._records: dict[str, dict[str, Any]] = {}
        self.marked: list[str] = []
        self.sort_column: str | None = None
        self.sort_reverse = False

    def compose_body(self) -> Iterable[Widget]:
        yield Static(id="task-counts")
        with Horizontal(id="tasks-body"):
            yield FastTable(TASK_COLUMNS, id="tasks")
            with Vertical(id="task-side"):
                yield Static(id="task-detail")
                yield RichLog(id="task-logs", max_lines=5_000, wrap=True, markup=False)

    @property
    def table(self) -> FastTable:
        return self.query_one("#tasks", FastTable)

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
        if self.marked:
            counts.append(f"  │ {len(self.marked)} marked: combined log tail", style="bold magenta")
        self.query_one("#task-counts", Static).update(counts)
        ordered = sort_tasks(model.tasks.values(), self.sort_column, self.sort_reverse)
        marked = set(self.marked)
        rows = [
            task_row(t, str(t["id"]) in marked)
            for t in ordered
            if matches_filter(task_haystack(t), self.query_text)
        ]
        self.table.sync(rows)
        self._show_detail(model, self.table.selected_key)

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
        grid.add_column(overflow="fold")
        for name in ROW_FIELDS:
            value = task.get(name)
            grid.add_row(name, task_state_text(str(value)) if name == "state" else opt(value))
        grid.add_row("cmd", Text(cmd_text(task)))  # in full: newlines kept
        for name, value in sorted(task.items()):
            if name in ROW_FIELDS or name in ("cmd", "argv", "shell", "id", "node_name"):
                continue
            shown = _detail_value(name, value)
            if shown is not None:
                grid.add_row(name, shown)
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
            try:
                self._show_detail(self.mesh.model, self.table.selected_key)
            except NoMatches:
                return  # the answer came after the screen was torn down (the app quit)

    # --- keys --------------------------------------------------------------
    def on_fast_table_row_highlighted(self, event: FastTable.RowHighlighted) -> None:
        tid = event.key
        self._show_detail(self.mesh.model, tid)
        if tid is not None and not self.marked:
            self._follow((tid,))
            self.run_worker(self._fetch_record(tid), group="task-record", exclusive=True)

    def _follow(self, tids: tuple[str, ...]) -> None:
        if tids != self._following:
            self._following = tids
            self.follow_logs(tids)

    def action_mark(self) -> None:
        tid = self.table.selected_key
        if tid is None:
            return
        if tid in self.marked:
            self.marked.remove(tid)
        elif len(self.marked) < MAX_TAILED:
            self.marked.append(tid)
        self.draw(self.mesh.model, force=True)
        self._follow(tuple(self.marked) or (tid,))

    def action_sort(self, step: int) -> None:
        """``s``: sort by the next column (after the last: back to live-first); ``S``: reverse."""
        keys = [key for key, _ in TASK_COLUMNS]
        if step < 0:
            self.sort_reverse = not self.sort_reverse
        elif self.sort_column is None:
            self.sort_column, self.sort_reverse = keys[0], False
        else:
            i = keys.index(self.sort_column) + 1
            self.sort_column, self.sort_reverse = (keys[i] if i < len(keys) else None), False
        for key, label in TASK_COLUMNS:
            arrow = (" ▼" if self.sort_reverse else " ▲") if key == self.sort_column else ""
            self.table.set_label(key, label + arrow)
        self.draw(self.mesh.model, force=True)

    def action_next_failed(self) -> None:
        """The next failed (or lost) task after the cursor, its logs full width."""
        keys = self.table.row_keys
        tasks = self.mesh.model.tasks
        failed = [i for i, k in enumerate(keys) if tasks.get(k, {}).get("state") in ("failed", "lost")]
        if not failed:
            self.notify("no failed task")
            return
        after = [i for i in failed if i > self.table.cursor_row]
        self.table.move_cursor((after or failed)[0])
        self.marked.clear()
        self._follow((keys[(after or failed)[0]],))
        self.action_toggle_logs(True)

    def action_toggle_logs(self, on: bool | None = None) -> None:
        body = self.query_one("#tasks-body")
        wide = not body.has_class("logs-wide") if on is None else on
        body.set_class(wide, "logs-wide")

    def action_back(self) -> None:
        body = self.query_one("#tasks-body")
        if body.has_class("logs-wide"):
            body.remove_class("logs-wide")
            return
        super().action_back()

    def action_cancel_task(self) -> None:
        tid = self.table.selected_key
        task = self.mesh.model.tasks.get(tid) if tid else None
        if tid is None or task is None:
            return
        if task.get("state") in FINISHED_TASK_STATES:
            self.notify(f"{short_id(tid)} is already {task.get('state')}")
            return
        self.mesh.start_operation("cancel", tid)

    # --- log tail ----------------------------------------------------------
    @work(exclusive=True, group="task-logs")
    async def follow_logs(self, tids: tuple[str, ...]) -> None:
        """Poll ``task.logs`` for each of ``tids`` until every stream reports eof."""
        log = self.query_one("#task-logs", RichLog)
        log.clear()
        combined = len(tids) > 1
        title = f"combined tail of {len(tids)} tasks" if combined else f"logs of {tids[0]}"
        log.write(Text(f"── {title} ──", style="bold #87afd7"))
        tails = {tid: _Tail() for tid in tids}
        while not all(t.finished for t in tails.values()):
            client = self.mesh.client
            if client is None or not self.is_current:
                await asyncio.sleep(1.0)  # offline, or another screen is showing
                continue
            progressed = False
            for tid, tail in tails.items():
                if tail.finished:
                    continue
                try:
                    progressed = await self._poll_task(client, tid, tail, log, combined) or progressed
                except (OSError, EOFError) as exc:
                    log.write(Text(f"(connection lost: {exc}; retrying)", style="yellow"))
                    await asyncio.sleep(1.0)
                    break
                if tail.finished and combined:
                    log.write(Text(f"── {short_id(tid)} ended ──", style="grey50"))
            if not progressed and not all(t.finished for t in tails.values()):
                await asyncio.sleep(LOG_POLL_IDLE)
        if all(t.gone for t in tails.values()):
            return  # nothing to follow: the reason is already written
        log.write(Text("── end of output ──", style="grey50"))
        if not combined:
            await self._fetch_record(tids[0])

    async def _learn_host(self, client: Any, tid: str, tail: _Tail) -> None:
        """Where ``tid`` runs, for the combined tail's prefix (the row may not say yet)."""
        model = self.mesh.model
        node = model.tasks.get(tid, {}).get("node")
        if not node:
            node = await _host_of(client, tid)
        if node:
            tail.host = model.display_name(str(node))

    async def _poll_task(self, client: Any, tid: str, tail: _Tail, log: RichLog, combined: bool) -> bool:
        """One ``task.logs`` round for ``tid``'s open streams; True if it got bytes."""
        got = False
        for stream in STREAMS:
            if tail.eof[stream]:
                continue
            try:
                reply = await client.call("task.logs", id=tid, offset=tail.offsets[stream], stream=stream)
            except (OSError, EOFError):
                raise
            except Exception as exc:  # an error reply (not_found, ...) ends this task's tail
                log.write(Text(f"({short_id(tid)}: logs unavailable: {exc})", style="red"))
                tail.gone = True
                return got
            if not isinstance(reply, Mapping):
                log.write(Text(f"(unexpected task.logs reply {reply!r})", style="red"))
                tail.gone = True
                return got
            lines = tail.feed(stream, reply)
            if combined and lines:
                await self._learn_host(client, tid, tail)
            host = tail.host or "-"
            style = "red" if stream == "stderr" else ""
            for line in lines:
                if combined:
                    text = Text(f"{tid[:8]} ", style="cyan")
                    text.append(f"{host:<6}", style="magenta")
                    text.append("│ ", style="grey42")
                    text.append(line, style=style)
                else:
                    text = Text(line, style=style)
                log.write(text)
            got = got or bool(reply.get("data"))
        return got


async def _host_of(client: Any, tid: str) -> str:
    try:
        record = await client.call("task.get", id=tid)
    except Exception:
        return ""
    return str(record.get("node") or "") if isinstance(record, Mapping) else ""


def _detail_value(name: str, value: Any) -> str | None:
    """How the detail pane shows one extra field of a task record (None: not shown)."""
    if name.endswith("_at") and isinstance(value, int | float):
        return clock(value)
    if "rss" in name and isinstance(value, int | float):
        return f"{value / 2**20:.1f} MiB"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, str | int):
        return one_line(str(value))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return None
