"""``LogView``: a virtual log; formats and paints only the lines on screen.

RichLog renders every line when it is written and all of them again on a
resize, which for a 10,000-line consensus log costs seconds.  ``LogView``
holds (id, item) pairs, turns an item into Rich ``Text`` with its formatter
only when the line scrolls into view (cached by id), and follows the tail
unless the operator scrolled up.  Lines are cropped to the view's width.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from meshtui.widgets.render import segments_of

BASE_STYLE = Style.parse("#c8d3e0 on #0b0e14")
RENDER_CACHE = 2_000
"""Rendered lines kept; a screenful is a few dozen."""


class LogView(ScrollView, can_focus=True):
    """Bounded list of lines with tail following; see the module docstring."""

    DEFAULT_CSS = """
    LogView { height: 1fr; scrollbar-size: 1 1; }
    """

    def __init__(self, formatter: Callable[[Any], Text], max_lines: int, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.formatter = formatter
        self.max_lines = max_lines
        self._lines: deque[tuple[int, Any]] = deque(maxlen=max_lines)
        self._strips: OrderedDict[int, Strip] = OrderedDict()
        self._follow = True

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def plain_lines(self) -> list[str]:
        """Every line as plain text (formats all of them: for tests, not for painting)."""
        return [self.formatter(item).plain for _, item in self._lines]

    def clear(self) -> None:
        self._lines.clear()
        self._strips.clear()
        self._follow = True
        self._resize()

    def extend(self, lines: Iterable[tuple[int, Any]]) -> None:
        """Append (id, item) lines; ids must be unique (they key the render cache)."""
        before = len(self._lines)
        self._lines.extend(lines)
        if len(self._lines) != before or len(self._lines) == self.max_lines:
            self._resize()

    def _resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self._lines))
        if self._follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow = self.is_vertical_scroll_end

    def on_resize(self) -> None:
        self._strips.clear()
        self._resize()

    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_offset.y) + y
        width = self.size.width
        if index >= len(self._lines):
            return Strip.blank(width, BASE_STYLE)
        line_id, item = self._lines[index]
        strip = self._strips.get(line_id)
        if strip is None:
            segments = segments_of(self.formatter(item), self.app.console, width, pad=False)
            strip = Strip(segments).apply_style(BASE_STYLE).crop_extend(0, width, BASE_STYLE)
            self._strips[line_id] = strip
            if len(self._strips) > RENDER_CACHE:
                self._strips.popitem(last=False)
        return strip
