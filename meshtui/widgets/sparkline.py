"""Sparklines: a series of numbers as one line of block characters.

``sparkline(values, width)`` is a pure function (tested on its own): the values
are resampled to ``width`` cells (each cell the mean of the values it covers),
scaled between their minimum and maximum (or from 0 when all are non-negative
and ``zero_based``), and drawn with the eight block heights ``▁``..``█``; a
cell without any value (a gap in the history) is a space.  ``Sparkline`` is
the Textual widget that shows one labelled series with its last value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static

BLOCKS = "▁▂▃▄▅▆▇█"


def _resample(values: Sequence[float | None], width: int) -> list[float | None]:
    if width <= 0:
        return []
    n = len(values)
    if n == 0:
        return [None] * width
    out: list[float | None] = []
    for cell in range(width):
        lo = cell * n // width
        hi = max(lo + 1, (cell + 1) * n // width)
        chunk = [v for v in values[lo:hi] if v is not None and math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else None)
    return out


def sparkline(values: Sequence[float | None], width: int, zero_based: bool = True) -> str:
    """``values`` as ``width`` block characters (module doc)."""
    cells = _resample(values, width)
    present = [v for v in cells if v is not None]
    if not present:
        return " " * width
    low, high = min(present), max(present)
    if zero_based and low >= 0:
        low = 0.0
    span = high - low
    out = []
    for v in cells:
        if v is None:
            out.append(" ")
        elif span <= 0:
            out.append(BLOCKS[0] if high == 0 else BLOCKS[len(BLOCKS) // 2])
        else:
            level = round((v - low) / span * (len(BLOCKS) - 1))
            out.append(BLOCKS[max(0, min(len(BLOCKS) - 1, level))])
    return "".join(out)


def last_value(values: Sequence[float | None]) -> float | None:
    """The newest value that is not a gap."""
    for v in reversed(values):
        if v is not None:
            return v
    return None


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.1f}%"
    if abs(value) >= 100 or value == int(value):
        return f"{value:.0f}{unit}"
    return f"{value:.3g}{unit}"


class Sparkline(Static):
    """One labelled series: ``label  ▁▂▅▇█▅▃  last`` (width follows the widget)."""

    def __init__(self, label: str, unit: str = "", *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.label = label
        self.unit = unit
        self.values: list[float | None] = []

    def show(self, values: Sequence[float | None]) -> None:
        self.values = list(values)
        self.refresh_line()

    def refresh_line(self) -> None:
        width = max(8, (self.size.width or 80) - 36)
        text = Text(no_wrap=True)
        text.append(f" {self.label:22} ", style="bold")
        text.append(sparkline(self.values, width), style="#5fafff")
        low = [v for v in self.values if v is not None]
        text.append(f" {format_value(last_value(self.values), self.unit):>8}", style="bold")
        if low:
            text.append(f"  max {format_value(max(low), self.unit)}", style="grey58")
        self.update(text)

    def on_resize(self) -> None:
        self.refresh_line()
