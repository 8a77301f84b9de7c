"""``FilterBar``: the ``/`` filter line at the bottom of an area screen."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """Hidden until opened; posts ``FilterBar.Applied`` as the query changes.

    Enter keeps the filter and hands focus back to the screen; esc clears it.
    """

    BINDINGS = [Binding("escape", "close(True)", "Clear filter")]

    class Applied(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    def __init__(self) -> None:
        super().__init__()
        self.display = False

    def open(self) -> None:
        self.display = True
        self.focus()

    def action_close(self, clear: bool = False) -> None:
        if clear:
            self.value = ""
        self.display = bool(self.value)
        self.screen.focus_next()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Applied(event.value.strip()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_close(clear=False)
