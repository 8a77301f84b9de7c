"""Mesh screen: the topology beside the member table."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from meshtui.model import MemberState, MeshModel, matches_filter
from meshtui.screens.base import AreaScreen
from meshtui.widgets.fasttable import FastTable, Row
from meshtui.widgets.render import cpu_cell, opt, pct, rtt_text, state_text
from meshtui.widgets.topology import Topology

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
            member.role or "-",
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

    def compose_body(self) -> Iterable[Widget]:
        with Horizontal(id="mesh-body"):
            with Vertical(id="topology-pane"):
                yield Static(id="mesh-summary")
                yield Topology(id="topology")
            yield FastTable(MEMBER_COLUMNS, id="members")

    def draw(self, model: MeshModel, force: bool) -> None:
        # A 200-row table repaints whole on any change: at most 4 times a second.
        if not force and not self.due("members", 0.25):
            return
        if not self.changed(model, "members", force=force):
            return
        self.query_one(Topology).show(model)
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
        members = sorted(model.members.values(), key=lambda m: m.name)
        rows = [
            member_row(m, model.consensus.leader, model.node)
            for m in members
            if matches_filter(member_text(m), self.query_text)
        ]
        self.query_one("#members", FastTable).sync(rows)
