"""``FastTable``: a virtual, row-cached table for hundreds of live rows.

Textual's DataTable repaints every visible cell whenever any cell changes,
which at 200 members updating several times a second costs tens of
milliseconds per frame.  This table is told the full list of rows
(``sync(rows)``), keeps one rendered ``Strip`` per row keyed by the row's
cells, and paints only the visible lines: a change to one row re-renders that
row alone.  Keys and mouse move a row cursor; the header stays put while rows
scroll.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from meshtui.widgets.render import segments_of

Cell = str | Text
Row = tuple[str, tuple[Cell, ...]]

HEADER_STYLE = Style.parse("bold #87afd7 on #152033")
CURSOR_STYLE = Style.parse("on #2a4a7a")
CURSOR_STYLE_BLURRED = Style.parse("on #1d3354")
ZEBRA_STYLE = Style.parse("on #0f141d")
BASE_STYLE = Style.parse("#c8d3e0 on #0b0e14")
MAX_COLUMN_WIDTH = 60
COLUMN_GAP = 2
CELL_CACHE = 20_000
"""Rendered Text cells kept (cleared whole when full: cheap and bounded)."""


def _signature(cell: Cell) -> object:
    """A hashable stand-in for a cell's content (Rich Text is not hashable)."""
    if isinstance(cell, str):
        return cell
    return (cell.plain, str(cell.style), tuple(cell.spans))


class FastTable(ScrollView, can_focus=True):
    """A table of ``(key, cells)`` rows with a row cursor; see the module docstring."""

    DEFAULT_CSS = """
    FastTable { height: 1fr; scrollbar-size: 1 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "Top", show=False),
        Binding("end", "jump(-1)", "Bottom", show=False),
    ]

    class RowHighlighted(Message):
        """The cursor is on a different row (``key`` None when the table is empty)."""

        def __init__(self, table: FastTable, key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> FastTable:
            return self.table

    def __init__(self, columns: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self._column_index = {key: i for i, (key, _) in enumerate(self.columns)}
        self._rows: list[Row] = []
        self._sigs: list[tuple[object, ...]] = []
        self._index: dict[str, int] = {}
        self._widths = [len(label) for _, label in self.columns]
        self._cache: dict[tuple[object, ...], Strip] = {}
        self._cell_cache: dict[tuple[object, int, Style], list[Segment]] = {}
        self.cursor_row = 0
        self._highlighted: str | None = None

    # --- data ------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def row_keys(self) -> list[str]:
        return [key for key, _ in self._rows]

    @property
    def selected_key(self) -> str | None:
        if not self._rows:
            return None
        return self._rows[min(self.cursor_row, len(self._rows) - 1)][0]

    def set_label(self, column: str, label: str) -> None:
        """Rename a column's header (a sort arrow, say)."""
        i = self._column_index[column]
        if self.columns[i][1] != label:
            self.columns[i] = (column, label)
            self._widths[i] = max(self._widths[i], len(label))
            self.refresh()

    def get_cell(self, key: str, column: str) -> Cell:
        return self._rows[self._index[key]][1][self._column_index[column]]

    def sync(self, rows: Sequence[Row]) -> None:
        """Show exactly ``rows``, keeping the cursor on the same key when it is still there."""
        selected = self.selected_key
        old_keys = [key for key, _ in self._rows]
        old_sigs = self._sigs
        self._rows = list(rows)
        self._sigs = [tuple(_signature(c) for c in cells) for _, cells in self._rows]
        self._index = {key: i for i, (key, _) in enumerate(self._rows)}
        widths = [len(label) for _, label in self.columns]
        for _, cells in self._rows:
            for i, cell in enumerate(cells):
                n = cell.cell_len if isinstance(cell, Text) else len(cell)
                if n > widths[i]:
                    widths[i] = min(n, MAX_COLUMN_WIDTH)
        same_shape = widths == self._widths and old_keys == [k for k, _ in self._rows]
        if widths != self._widths:
            self._widths = widths
            self._cache.clear()
        if len(self._cache) > 4 * max(len(self._rows), 64):
            self._cache.clear()  # bounded: stale row renders go away
        old_cursor = self.cursor_row
        if selected is not None and selected in self._index:
            self.cursor_row = self._index[selected]
        else:
            self.cursor_row = min(self.cursor_row, max(len(self._rows) - 1, 0))
        total = sum(self._widths) + COLUMN_GAP * (len(self._widths) + 1)
        self.virtual_size = Size(total, len(self._rows) + 1)
        self._announce()
        if not same_shape or old_cursor != self.cursor_row:
            self.refresh()
            return
        # Same rows in the same order: repaint only the visible rows that changed.
        top = int(self.scroll_offset.y)
        for i in range(top, min(top + self.size.height, len(self._rows))):
            if self._sigs[i] != old_sigs[i]:
                self.refresh_line(i + 1)

    # --- cursor ----------------------------------------------------------
    def move_cursor(self, row: int) -> None:
        if not self._rows:
            return
        old = self.cursor_row
        self.cursor_row = max(0, min(row, len(self._rows) - 1))
        top = int(self.scroll_offset.y)
        self._keep_cursor_visible()
        self._announce()
        if int(self.scroll_offset.y) != top:
            self.refresh()
        else:
            self.refresh_line(old + 1)
            self.refresh_line(self.cursor_row + 1)

    def action_move(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step * max(self.size.height - 2, 1))

    def action_jump(self, where: int) -> None:
        self.move_cursor(0 if where == 0 else len(self._rows) - 1)

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_cursor(int(self.scroll_offset.y) + event.y - 1)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def _keep_cursor_visible(self) -> None:
        visible = max(self.size.height - 1, 1)
        top = int(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False)

    def _announce(self) -> None:
        key = self.selected_key
        if key != self._highlighted:
            self._highlighted = key
            self.post_message(self.RowHighlighted(self, key))

    # --- painting --------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            strip = self._header_strip()
        else:
            index = int(scroll_y) + y - 1
            if index >= len(self._rows):
                return Strip.blank(width, BASE_STYLE)
            strip = self._row_strip(index)
        return strip.crop_extend(int(scroll_x), int(scroll_x) + width, BASE_STYLE)

    def _header_strip(self) -> Strip:
        key = ("header", tuple(self._widths), tuple(label for _, label in self.columns))
        strip = self._cache.get(key)
        if strip is None:
            cells = [Text(label) for _, label in self.columns]
            strip = self._render_cells(cells, HEADER_STYLE)
            self._cache[key] = strip
        return strip

    def _row_strip(self, index: int) -> Strip:
        row_key, cells = self._rows[index]
        if index == self.cursor_row:
            style = CURSOR_STYLE if self.has_focus else CURSOR_STYLE_BLURRED
        else:
            style = ZEBRA_STYLE if index % 2 else BASE_STYLE
        key = (row_key, self._sigs[index], style)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._render_cells(cells, style)
            self._cache[key] = strip
        return strip

    def _render_cells(self, cells: Sequence[Cell], style: Style) -> Strip:
        console = self.app.console
        gap = Segment(" " * COLUMN_GAP, style)
        segments: list[Segment] = [gap]
        for cell, width in zip(cells, self._widths, strict=False):
            if isinstance(cell, str):
                shown = cell if len(cell) <= width else cell[: max(width - 1, 0)] + "…"
                segments.append(Segment(shown.ljust(width), style))
            else:
                # Most styled cells repeat between rows and refreshes: cache them per
                # row style, with the row's background already applied.
                key = (_signature(cell), width, style)
                cached = self._cell_cache.get(key)
                if cached is None:
                    raw = segments_of(cell, console, width, pad=True)
                    cached = list(Segment.apply_style(raw, style))
                    if len(self._cell_cache) > CELL_CACHE:
                        self._cell_cache.clear()
                    self._cell_cache[key] = cached
                segments.extend(cached)
            segments.append(gap)
        return Strip(segments)
