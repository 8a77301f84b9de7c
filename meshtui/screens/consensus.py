"""Consensus screen: header, per-peer replication, proposals, leader timeline, and the log.

The log starts with a bounded backfill of recent committed entries
(``consensus.log``) and continues with the live stream.  Replication is the
leader's view (``consensus.progress``): attached to a follower it says which
node to attach to.  ``#pbft-slot`` is where the PBFT view (the PBFT issue's
``meshtui/widgets/pbft_view.py``) mounts; it shows only when it has a child.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from meshtui.model import MAX_LOG_LINES, ConsensusView, LogLine, MeshModel, matches_filter
from meshtui.screens.base import AreaScreen
from meshtui.widgets.bars import progress_bar
from meshtui.widgets.logview import LogView
from meshtui.widgets.pbft_view import PbftView
from meshtui.widgets.render import CONSENSUS_KIND_STYLE, clock

REPLICATION_BAR = 10
"""Cells of each peer's replication bar (match index / the leader's last index)."""


def log_line_text(line: LogLine) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    # Backfilled entries carry the leader's stamp; a marker line has none.
    text.append(clock(line.at) if line.at > 0 else "········", style="grey50")
    text.append(f" T{line.term:<4}", style="magenta")
    text.append(f" {'#' + str(line.index) if line.index is not None else '':>8}", style="cyan")
    text.append(f" {line.kind:<8} ", style=CONSENSUS_KIND_STYLE.get(line.kind, "white") + " bold")
    text.append(line.text, style=CONSENSUS_KIND_STYLE.get(line.kind, "white"))
    return text


def line_haystack(line: LogLine) -> str:
    index = f"#{line.index}" if line.index is not None else ""
    return f"T{line.term} {index} {line.kind} {line.text}"


class ConsensusScreen(AreaScreen):
    AREA = "consensus"

    def __init__(self) -> None:
        super().__init__()
        self._last_seq = 0

    def compose_body(self) -> Iterable[Widget]:
        with Horizontal(id="consensus-head"):
            yield Static(id="consensus-header")
            yield Static(id="replication")
            yield Static(id="proposals")
        yield Static(id="leader-timeline")
        yield Vertical(id="pbft-slot")
        yield LogView(log_line_text, MAX_LOG_LINES, id="consensus-log")

    def draw(self, model: MeshModel, force: bool) -> None:
        if not self.changed(model, "consensus", "proposals", "members", force=force):
            return
        view = model.consensus
        voter_states = tuple((v, model.members[v].state if v in model.members else "") for v in view.voters)
        header_key = (
            view.learners,
            view.engine,
            view.role,
            view.term,
            view.leader,
            view.commit_index,
            voter_states,
        )
        self.set_static("#consensus-header", self._header(model), key=header_key)
        self.set_static("#proposals", self._proposals(model), key=repr(model.proposals))
        self.set_static(
            "#replication", replication_table(view), key=(view.progress, view.progress_from, view.last_index)
        )
        self.set_static("#leader-timeline", leader_timeline(model), key=tuple(model.leader_changes))
        slot = self.query_one("#pbft-slot")
        if view.engine == "pbft" and not slot.children:
            slot.mount(PbftView(self.mesh.call_client))
        slot.set_class(bool(slot.children), "shown")
        log = self.query_one("#consensus-log", LogView)
        query = self.query_text
        if force:
            log.clear()
            log.extend((ln.seq, ln) for ln in model.log if matches_filter(line_haystack(ln), query))
        else:
            fresh: list[LogLine] = []
            for line in reversed(model.log):  # newest first, stop at what is shown
                if line.seq <= self._last_seq:
                    break
                fresh.append(line)
            log.extend((ln.seq, ln) for ln in reversed(fresh) if matches_filter(line_haystack(ln), query))
        self._last_seq = model.log[-1].seq if model.log else self._last_seq

    @staticmethod
    def _header(model: MeshModel) -> Table:
        view = model.consensus
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="grey70", justify="right")
        grid.add_column()
        grid.add_row("engine", Text(view.engine or "-", style="bold"))
        grid.add_row("role", Text(view.role or "-", style="cyan"))
        grid.add_row("term", Text(str(view.term), style="bold magenta"))
        leader = Text(view.leader or "none", style="bold yellow" if view.leader else "bold red")
        grid.add_row("leader", leader)
        grid.add_row("commit", Text(f"#{view.commit_index}", style="bold cyan"))
        voters = Text()
        for i, voter in enumerate(view.voters):
            if i:
                voters.append(" ")
            member = model.members.get(voter)
            style = "green" if member is None or member.state == "alive" else "red"
            voters.append(voter + ("★" if voter == view.leader else ""), style=style)
        grid.add_row("voters", voters if view.voters else Text("-"))
        if view.learners:
            shown = " ".join(view.learners[:12]) + (" …" if len(view.learners) > 12 else "")
            grid.add_row("learners", Text(shown, style="grey70"))
        return grid

    @staticmethod
    def _proposals(model: MeshModel) -> Table | Text:
        if not model.proposals:
            return Text("no proposals", style="grey50")
        table = Table(box=None, padding=(0, 1), header_style="bold #87afd7", expand=True)
        for col in ("proposal", "yes", "no", "need", "state"):
            table.add_column(col, no_wrap=True)
        for prop in model.proposals[-6:]:
            voters = prop.get("voters")
            n_voters = len(voters) if isinstance(voters, list) else voters
            threshold = prop.get("threshold")
            need = f"{threshold:.0%}" if isinstance(threshold, float) else str(threshold)
            table.add_row(
                str(prop.get("title") or prop.get("id")),
                Text(str(prop.get("yes", 0)), style="green"),
                Text(str(prop.get("no", 0)), style="red"),
                need + (f" of {n_voters}" if n_voters is not None else ""),
                str(prop.get("state", "")),
            )
        return table


def _contact(seconds: float | None) -> Text:
    if seconds is None:
        return Text("-", style="grey50")
    style = "green" if seconds < 0.5 else "yellow" if seconds < 2.0 else "bold red"
    return Text(f"{seconds:.1f}s ago" if seconds >= 0.05 else "now", style=style)


def replication_table(view: ConsensusView) -> Table | Text:
    """Each voter's and learner's match index, lag, last contact and a bar (the leader's view)."""
    if not view.progress:
        if view.role == "leader":
            return Text("replication: this agent does not report it (consensus.progress)", style="grey50")
        if view.leader:
            return Text(f"replication: the leader's view — attach to {view.leader} to see it", style="grey50")
        return Text("replication: no leader", style="grey50")
    table = Table(box=None, padding=(0, 1), header_style="bold #87afd7", expand=True)
    for col in ("peer", "match", "lag", "contact", "replicated"):
        table.add_column(col, no_wrap=True)
    last = max(view.last_index, 1)
    for peer in view.progress:
        leader = peer.state == "leader"
        name = Text(peer.name, style="bold yellow" if leader else "")
        name.append(" ★" if leader else (" (learner)" if peer.learner else ""), style="grey70")
        lag_style = "green" if peer.lag == 0 else "yellow" if peer.lag < 100 else "bold red"
        table.add_row(
            name,
            Text(f"#{peer.match}", style="cyan"),
            Text(str(peer.lag), style=lag_style),
            Text("self", style="grey50") if leader else _contact(peer.last_contact_s),
            progress_bar(peer.match / last if peer.active or leader else None, REPLICATION_BAR),
        )
    return table


def leader_timeline(model: MeshModel) -> Text:
    """``12:00:01 T3 n1 ─▶ 12:00:09 T4 none ─▶ 12:00:10 T4 n3``, newest on the right."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("leaders ", style="grey70")
    changes = list(model.leader_changes)[-8:]
    if not changes:
        return text.append("no change seen since attaching", style="grey50")
    for i, change in enumerate(changes):
        if i:
            text.append(" ─▶ ", style="grey42")
        text.append(clock(change.at) if change.at > 0 else "--:--:--", style="grey50")
        text.append(f" T{change.term} ", style="magenta")
        text.append(change.leader or "none", style="bold yellow" if change.leader else "bold red")
    return text
