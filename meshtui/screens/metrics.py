"""Metrics screen: the attached agent's metrics history as sparklines, and its report.

The agent keeps the history (``agent/metrics/history.py``); this screen asks
for it with ``metrics.history`` (every series bucketed to the screen's width)
and for the current figures with ``report``, every ``POLL_INTERVAL`` seconds
while it is shown, in a worker so the UI never waits on the network.  ``t``
cycles the timeframe (10 min, 1 h, 24 h, 7 d, 30 d).  An agent without the
method (an older one) leaves a one-line note instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from meshtui.model import MeshModel
from meshtui.screens.base import AreaScreen
from meshtui.widgets.sparkline import Sparkline, format_value

POLL_INTERVAL = 2.0
"""Seconds between fetches of the history and the report while the screen is shown."""

TIMEFRAMES = ("10m", "1h", "24h", "7d", "30d")

SERIES: tuple[tuple[str, str, str], ...] = (
    ("members_alive", "members alive", ""),
    ("connectivity_pct", "connectivity", "%"),
    ("throughput", "messages/s", ""),
    ("cpu", "cpu (this node)", ""),
    ("rtt_p50_ms", "rtt p50 ms", ""),
    ("commit_p99_ms", "commit p99 ms", ""),
    ("decision_p99_ms", "decision p99 ms", ""),
    ("leader_changes", "leader changes", ""),
    ("load_stddev", "load stddev", ""),
    ("utilisation", "utilisation", ""),
    ("migrations_per_minute", "migrations/min", ""),
    ("hotspots", "hotspots", ""),
)
"""(history series, label, unit) in the order they are drawn."""


def figures_line(report: Mapping[str, Any]) -> Text:
    """The report's headline figures on one line."""
    text = Text(no_wrap=True)
    rates = report.get("throughput_msgs_per_s") or {}
    parts = [
        ("leader changes", report.get("leader_changes")),
        ("msgs/s 10s", rates.get("10s") if isinstance(rates, Mapping) else None),
        ("msgs/s 1m", rates.get("1m") if isinstance(rates, Mapping) else None),
        ("recovery s", report.get("partition_recovery_s")),
        ("crash f", report.get("crash_tolerance_f")),
        ("byzantine f", report.get("byzantine_tolerance_f")),
        ("participation", report.get("vote_participation")),
    ]
    for label, value in parts:
        text.append(f" {label} ", style="grey70")
        text.append(format_value(value if isinstance(value, int | float) else None), style="bold")
    hot = report.get("hotspots") or []
    text.append("  hotspots ", style="grey70")
    text.append(", ".join(map(str, hot)) if hot else "none", style="bold red" if hot else "bold")
    return text


class MetricsScreen(AreaScreen):
    AREA = "metrics"
    BINDINGS: ClassVar[list[BindingType]] = [
        *AreaScreen.BINDINGS,
        Binding("t", "cycle_timeframe", "Timeframe"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.timeframe = TIMEFRAMES[0]
        self.history: dict[str, Any] = {}
        self.report: dict[str, Any] = {}
        self.note = ""

    def compose_body(self) -> Iterable[Widget]:
        yield Static(id="metrics-header")
        yield Static(id="metrics-figures")
        with VerticalScroll(id="metrics-lines"):
            for key, label, unit in SERIES:
                yield Sparkline(label, unit, id=f"spark-{key}")

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(POLL_INTERVAL, self.fetch)
        self.fetch()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.fetch()

    def action_cycle_timeframe(self) -> None:
        self.timeframe = TIMEFRAMES[(TIMEFRAMES.index(self.timeframe) + 1) % len(TIMEFRAMES)]
        self.fetch()

    def fetch(self) -> None:
        if self.is_current:
            self._fetch()

    @work(group="metrics", exclusive=True)
    async def _fetch(self) -> None:
        client = self.mesh.client
        if client is None:
            return
        width = max(20, self.size.width - 36)
        try:
            self.history = await client.call("metrics.history", timeframe=self.timeframe, points=width)
            self.report = await client.call("report")
            self.note = ""
        except Exception as exc:
            self.note = f"metrics unavailable from this agent: {exc}"
        self.show()

    def draw(self, model: MeshModel, force: bool) -> None:
        if force:
            self.show()

    def show(self) -> None:
        header = Text(no_wrap=True)
        header.append(f" history over {self.timeframe} ", style="bold reverse #5fafff")
        step = self.history.get("step")
        if step:
            header.append(f"  slots of {step} s, kept by the agent", style="grey70")
        header.append("   t: timeframe", style="grey50")
        if self.note:
            header.append(f"   {self.note}", style="bold red")
        self.query_one("#metrics-header", Static).update(header)
        self.query_one("#metrics-figures", Static).update(figures_line(self.report))
        series = self.history.get("series") or {}
        for key, _label, _unit in SERIES:
            self.query_one(f"#spark-{key}", Sparkline).show(series.get(key) or [])
