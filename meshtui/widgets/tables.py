"""``SyncTable``: a DataTable that is told the rows it should show and applies the difference.

Screens rebuild their row list from the model on every refresh; this widget
keeps the cursor on the same row key and only touches cells that changed, so a
200-member table updating several times a second stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text
Row = tuple[str, tuple[Cell, ...]]


class SyncTable(DataTable[Cell]):
    """DataTable with ``sync(rows)``; the column keys are given at construction."""

    def __init__(self, columns: Sequence[tuple[str, str]], **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._column_spec = list(columns)
        self._shown: dict[str, tuple[Cell, ...]] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for key, label in self._column_spec:
            self.add_column(label, key=key)

    @property
    def selected_key(self) -> str | None:
        """Row key under the cursor, or None for an empty table."""
        if not self._order or not self.is_valid_row_index(self.cursor_row):
            return None
        return self._order[self.cursor_row]

    def sync(self, rows: Sequence[Row]) -> None:
        order = [key for key, _ in rows]
        if order != self._order:
            self._rebuild(rows)
            return
        column_keys = [key for key, _ in self._column_spec]
        for key, cells in rows:
            old = self._shown.get(key)
            if old == cells:
                continue
            for i, cell in enumerate(cells):
                if old is None or old[i] != cell:
                    self.update_cell(key, column_keys[i], cell)
            self._shown[key] = cells

    def _rebuild(self, rows: Sequence[Row]) -> None:
        selected = self.selected_key
        self.clear()
        self._shown = {}
        self._order = []
        for key, cells in rows:
            self.add_row(*cells, key=key)
            self._shown[key] = cells
            self._order.append(key)
        if selected is not None and selected in self._shown:
            self.move_cursor(row=self._order.index(selected), animate=False)
