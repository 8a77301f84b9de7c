"""Mesh screen: the topology beside the member table, the selected host's links, recent changes.

``d``/``u`` drain and undrain the selected host, ``t`` hands Raft leadership to
it; each asks first and then shows its progress in the ops bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from meshtui.model import MAX_CHANGES, Change, MemberState, MeshModel, matches_filter, natural_key
from meshtui.screens.base import AreaScreen
from meshtui.widgets.fasttable import FastTable, Row
from meshtui.widgets.logview import LogView
from meshtui.widgets.render import REASON_STYLE, clock, cpu_cell, opt, pct, rtt_text, state_text
from meshtui.widgets.topology import Topology

CHANGE_STYLE = {
    "alive": "green",
    "suspect": "yellow",
    "dead": "bold red",
    "left": "grey50",
    "election": "bold yellow",
    "drain": "magenta",
    "move": "cyan",
}


def change_text(change: Change) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(clock(change.at) if change.at > 0 else "--:--:--", style="grey50")
    text.append(f" {change.kind:<8} ", style=CHANGE_STYLE.get(change.kind, "white") + " bold")
    style = CHANGE_STYLE.get(change.kind, "white")
    if change.kind == "move":
        reason = change.text.rsplit("(", 1)[-1].rstrip(")")
        style = REASON_STYLE.get(reason, style)
    text.append(change.text, style=style)
    return text


def show_demo_note(screen: AreaScreen) -> None:
    """The demo's workload and what to watch for (only under ``meshtui demo``)."""
    note = screen.query_one("#demo-note", Static)
    if screen.mesh.demo_controls is None:
        note.display = False
        return
    from meshtui.demo import DEMO_NOTE

    note.update(Text(DEMO_NOTE))


def links_text(model: MeshModel, name: str | None) -> Text:
    """The selected host's links with their RTT (``status.links``)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if model.links is None:
        return Text(" no link state from this agent", style="grey50")
    if name is None:
        return Text(" select a host to see its links", style="grey50")
    mine = [lk for lk in model.links if name in (lk.src, lk.dst)]
    text.append(f" {name}:", style="bold")
    if not mine:
        text.append(" no links reported", style="grey50")
    seen: set[tuple[str, str]] = set()
    for link in mine:
        if (link.src, link.dst) in seen:
            continue
        seen.add((link.src, link.dst))
        arrow = f"{link.src}→{link.dst}"
        text.append(f"\n  {arrow:<12}", style="grey70")
        if link.state == "down":
            text.append("down", style="bold red")
            continue
        text.append_text(rtt_text(link.rtt_ms))
        if link.state == "relayed":
            text.append(f" relayed via {link.via or '?'}", style="magenta")
        else:
            text.append(" direct", style="green")
    return text

MEMBER_COLUMNS = (
    ("name", "name"),
    ("addr", "address"),
    ("state", "state"),
    ("role", "role"),
    ("cpu", "cpu %  history"),
    ("mem", "mem"),
    ("slots", "slots"),
    ("tasks", "tasks"),
    ("rtt", "rtt"),
    ("caps", "caps"),
)


def member_row(member: MemberState, leader: str | None, local: str) -> Row:
    name = Text(member.name, style="bold" if member.name == local else "")
    if member.name == leader:
        name.append(" ★", style="bold yellow")
    if member.draining:
        name.append(" ⇣", style="magenta")
    return (
        member.name,
        (
            name,
            member.addr,
            state_text(member.state),
            # A dead or left member holds no role: its old one is stale.
            (member.role or "-") if member.state in ("alive", "suspect") else "-",
            cpu_cell(member.cpu, member.cpu_history, live=member.state in ("alive", "suspect")),
            pct(member.mem),
            opt(member.slots),
            opt(member.tasks),
            rtt_text(member.rtt_ms),
            ",".join(member.caps) or "-",
        ),
    )


def member_text(member: MemberState) -> str:
    """What the filter matches a member against."""
    return " ".join((member.name, member.addr, member.state, member.role, *member.caps))


class MeshScreen(AreaScreen):
    AREA = "mesh"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "operate('drain')", "Drain"),
        Binding("u", "operate('undrain')", "Undrain"),
        Binding("t", "operate('transfer')", "Lead→"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._last_change = 0

    def compose_body(self) -> Iterable[Widget]:
        with Horizontal(id="mesh-body"):
            with Vertical(id="topology-pane"):
                yield Static(id="mesh-summary")
                yield Topology(id="topology")
                yield Static(id="link-detail")
            with Vertical(id="mesh-right"):
                yield FastTable(MEMBER_COLUMNS, id="members")
                yield Static(id="demo-note")
                yield LogView(change_text, MAX_CHANGES, id="changes")

    def on_mount(self) -> None:
        self.query_one("#changes", LogView).border_title = "recent changes"
        show_demo_note(self)
        super().on_mount()

    @property
    def selected(self) -> str | None:
        return self.query_one("#members", FastTable).selected_key

    def on_fast_table_row_highlighted(self, event: FastTable.RowHighlighted) -> None:
        model = self.mesh.model
        self.query_one(Topology).show(model, event.key)
        self.set_static("#link-detail", links_text(model, event.key), key=(event.key, model.links))

    def action_operate(self, kind: str) -> None:
        name = self.selected
        if name is None:
            return
        if kind == "transfer" and name == self.mesh.model.consensus.leader:
            self.notify(f"{name} already leads")
            return
        self.mesh.start_operation(kind, name)

    def draw(self, model: MeshModel, force: bool) -> None:
        self._draw_changes(model, force)
        # A 200-row table repaints whole on any change: at most 4 times a second.
        if not force and not self.due("members", 0.25):
            return
        if not self.changed(model, "members", force=force):
            return
        self.query_one(Topology).show(model, self.selected)
        self.set_static("#link-detail", links_text(model, self.selected), key=(self.selected, model.links))
        counts = dict.fromkeys(("alive", "suspect", "dead", "left"), 0)
        for m in model.members.values():
            counts[m.state] = counts.get(m.state, 0) + 1
        summary = Text(no_wrap=True, overflow="ellipsis")
        summary.append(" leader ", style="grey70")
        leader = model.consensus.leader
        summary.append(leader or "none", style="bold yellow" if leader else "bold red")
        summary.append(f"  {len(model.members)} members ", style="bold")
        for state, style in (("alive", "green"), ("suspect", "yellow"), ("dead", "red")):
            if counts[state]:
                summary.append(f" {counts[state]} {state}", style=style)
        if model.cluster_avg_cpu is not None:
            summary.append("  avg cpu ", style="grey70")
            summary.append_text(pct(model.cluster_avg_cpu))
        self.set_static("#mesh-summary", summary)
        members = sorted(model.members.values(), key=lambda m: natural_key(m.name))
        rows = [
            member_row(m, model.consensus.leader, model.node)
            for m in members
            if matches_filter(member_text(m), self.query_text)
        ]
        self.query_one("#members", FastTable).sync(rows)

    def _draw_changes(self, model: MeshModel, force: bool) -> None:
        if not self.changed(model, "changes", force=force):
            return
        feed = self.query_one("#changes", LogView)
        if force:
            feed.clear()
            fresh = list(model.changes)
        else:
            fresh = [c for c in model.changes if c.seq > self._last_change]
        feed.extend((c.seq, c) for c in fresh)
        if model.changes:
            self._last_change = model.changes[-1].seq
