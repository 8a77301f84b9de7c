"""Consensus screen: engine/term/leader/commit header, proposals, and the live consensus log."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Static

from meshtui.model import MAX_LOG_LINES, LogLine, MeshModel, matches_filter
from meshtui.screens.base import AreaScreen
from meshtui.widgets.logview import LogView
from meshtui.widgets.render import CONSENSUS_KIND_STYLE, clock


def log_line_text(line: LogLine) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(clock(line.at), style="grey50")
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
            yield Static(id="proposals")
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
