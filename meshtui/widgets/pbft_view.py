"""The Consensus screen's PBFT view (issue 13): view, primary, watermarks, the
phase of every sequence number in the window, and equivocation evidence.

Mounted into the screen's ``#pbft-slot`` when the attached agent runs PBFT.
It polls ``status`` (its ``consensus.pbft`` part) once a second through the
app's ``call_client``; ``render_pbft`` is a pure function of that part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from meshtui.commands import pbft_group_lines

PHASE_STYLE = {
    "executed": ("█", "green"),
    "committed": ("▓", "cyan"),
    "prepared": ("▒", "yellow"),
    "pre-prepared": ("░", "magenta"),
    "voting": ("·", "grey50"),
}
"""How each phase shows in the window strip (one cell per sequence number)."""

WINDOW_CELLS = 96
"""Sequence numbers shown at most (the newest)."""

POLL_SECONDS = 1.0

Fetch = Callable[[str, dict[str, Any], Callable[[Any], None]], None]


def render_pbft(pbft: Mapping[str, Any] | None) -> Group | Text:
    if not pbft:
        return Text("PBFT: no status yet", style="grey50")
    head = Text()
    head.append("PBFT ", style="bold")
    head.append(f"view {pbft.get('view')} ", style="magenta")
    head.append(f"primary {pbft.get('primary')} ", style="bold cyan")
    state = "active" if pbft.get("active") else "changing view"
    head.append(f"({state})  ", style="green" if pbft.get("active") else "yellow")
    head.append(f"n={pbft.get('n')} f={pbft.get('f')}  ")
    head.append(f"watermarks {pbft.get('low')}..{pbft.get('high')}  executed {pbft.get('executed')}  ")
    head.append(f"checkpoint lag {pbft.get('checkpoint_lag')}  view changes {pbft.get('view_changes')}")
    strip = Text("window ", style="grey50")
    window = [row for row in pbft.get("window") or [] if isinstance(row, list | tuple) and len(row) == 2]
    for _seq, phase in window[-WINDOW_CELLS:]:
        glyph, style = PHASE_STYLE.get(str(phase), ("?", "red"))
        strip.append(glyph, style=style)
    if not window:
        strip.append("(empty)", style="grey50")
    legend = Text("  " + "  ".join(f"{g} {p}" for p, (g, _) in PHASE_STYLE.items()), style="grey50")
    lines: list[Text] = [head, strip + legend]
    lines += [Text(line, style="yellow" if not line.startswith("replicas") else "")
              for line in pbft_group_lines(pbft)]
    for ev in pbft.get("evidence") or []:
        lines.append(Text(f"EVIDENCE {ev.get('summary')}", style="bold red"))
    return Group(*lines)


class PbftView(Static):
    """Polls ``status`` and shows its ``consensus.pbft`` part."""

    def __init__(self, fetch: Fetch) -> None:
        super().__init__(render_pbft(None), id="pbft-view")
        self._fetch = fetch

    def on_mount(self) -> None:
        self.set_interval(POLL_SECONDS, self._poll)
        self._poll()

    def _poll(self) -> None:
        self._fetch("status", {}, self._show)

    def _show(self, status: Any) -> None:
        cons = status.get("consensus") if isinstance(status, Mapping) else None
        pbft = cons.get("pbft") if isinstance(cons, Mapping) else None
        self.update(render_pbft(pbft if isinstance(pbft, Mapping) else None))
