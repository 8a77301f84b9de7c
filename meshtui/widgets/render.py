"""Pure formatting helpers shared by the widgets: colours, sparklines, numbers, times.

Nothing here reads a clock or touches Textual state, so snapshot tests stay
deterministic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from rich.console import Console
from rich.segment import Segment
from rich.text import Span, Text

STATE_STYLE = {
    "alive": "bold green",
    "suspect": "bold yellow",
    "dead": "bold red",
    "left": "grey50",
}
TASK_STATE_STYLE = {
    "queued": "grey70",
    "assigned": "cyan",
    "running": "bold cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "grey50",
    "lost": "magenta",
}
CONSENSUS_KIND_STYLE = {
    "entry": "white",
    "role": "cyan",
    "term": "magenta",
    "election": "bold yellow",
    "vote": "yellow",
    "leader": "bold green",
    "proposal": "bold blue",
    "conf": "magenta",
}
REASON_STYLE = {
    "steal": "cyan",
    "hot-cold": "bold yellow",
    "rebalance": "yellow",
    "failover": "bold red",
    "drain": "magenta",
}
_SPARK = "▁▂▃▄▅▆▇█"


def segments_of(text: Text, console: Console, width: int, pad: bool) -> list[Segment]:
    """One line of ``text`` cut (with an ellipsis) to ``width`` cells, as Segments.

    ``Text.render`` ignores the Text's base style, so it is folded in as the
    lowest-priority span first.
    """
    line = text.copy()
    line.no_wrap = True
    line.end = ""
    line.truncate(width, overflow="ellipsis", pad=pad)
    if line.style:
        line.spans.insert(0, Span(0, len(line), line.style))
        line.style = ""
    return list(line.render(console))


def state_text(state: str) -> Text:
    return Text(state or "?", style=STATE_STYLE.get(state, "white"))


def task_state_text(state: str) -> Text:
    return Text(state or "?", style=TASK_STATE_STYLE.get(state, "white"))


def sparkline(samples: Iterable[float], width: int = 12, top: float = 100.0) -> str:
    """Block-character sparkline of the last ``width`` samples on a fixed 0..top scale."""
    values = list(samples)[-width:]
    chars = []
    for v in values:
        frac = min(max(v / top, 0.0), 1.0) if top > 0 else 0.0
        chars.append(_SPARK[min(int(frac * len(_SPARK)), len(_SPARK) - 1)])
    return "".join(chars).rjust(width)


def load_style(pct: float | None) -> str:
    """Colour for a CPU/memory percentage: the rebalancer's cold/hot thresholds."""
    if pct is None:
        return "grey50"
    if pct >= 80.0:
        return "bold red"
    if pct >= 30.0:
        return "yellow"
    return "green"


def cpu_cell(cpu: float | None, history: Iterable[float], width: int = 10, live: bool = True) -> Text:
    """``42.0% ▂▃▅▇`` with each sparkline bar coloured by its own sample (grey if not live)."""
    text = Text(f"{cpu:5.1f}% " if cpu is not None else "    -  ", style=load_style(cpu))
    samples = list(history)[-width:]
    text.append(" " * (width - len(samples)))
    for sample in samples:
        text.append(sparkline([sample], 1), style=load_style(sample) if live else "grey42")
    return text


def pct(value: float | None) -> Text:
    if value is None:
        return Text("-", style="grey50")
    return Text(f"{value:.0f}%", style=load_style(value))


def rtt_style(rtt_ms: float | None) -> str:
    if rtt_ms is None:
        return "grey42"
    if rtt_ms < 1.0:
        return "green"
    if rtt_ms < 10.0:
        return "cyan"
    if rtt_ms < 50.0:
        return "yellow"
    return "red"


def rtt_text(rtt_ms: float | None) -> Text:
    if rtt_ms is None:
        return Text("-", style="grey50")
    shown = f"{rtt_ms:.2f}ms" if rtt_ms < 10 else f"{rtt_ms:.0f}ms"
    return Text(shown, style=rtt_style(rtt_ms))


def clock(ts: float) -> str:
    """``HH:MM:SS`` of a Unix timestamp in local time."""
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def opt(value: object) -> str:
    return "-" if value is None or value == "" else str(value)
