"""Modal dialogs: the help screen, a one-line prompt, and a node picker."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

HELP_KEYS: tuple[tuple[str, str], ...] = (
    ("1 2 3 4 5", "Mesh · Consensus · Tasks · Migrations · Metrics"),
    ("tab / shift+tab", "next / previous screen"),
    ("/", "filter the current screen (words, all must match)"),
    (":", "command palette: submit, cancel, drain, undrain, transfer leadership"),
    ("↑ ↓ pgup pgdn", "move in a table; on Tasks the selected task's logs follow"),
    ("esc", "close a dialog, clear the filter"),
    ("space · s / S", "Tasks: mark for the combined log tail · sort column / reverse"),
    ("f · l · c", "Tasks: next failed task with its logs · logs full width · cancel"),
    ("d · u · t", "Mesh: drain · undrain · transfer leadership to the selected node"),
    ("x", "switch cluster (several -t targets)"),
    ("?", "this help"),
    ("q", "quit"),
)
DEMO_KEYS: tuple[tuple[str, str], ...] = (
    ("k", "demo: kill a node (SIGKILL)"),
    ("r", "demo: restart a killed node"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, demo: bool) -> None:
        super().__init__()
        self._demo = demo

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 2), show_header=False)
        table.add_column(style="bold #5fafff", no_wrap=True)
        table.add_column()
        for key, what in HELP_KEYS + (DEMO_KEYS if self._demo else ()):
            table.add_row(key, what)
        with Vertical(id="help-box", classes="dialog"):
            yield Static(Text("meshtui — keys", style="bold"), classes="dialog-title")
            yield Static(table)
            yield Static(
                Text(
                    "Mouse: click a screen name, a row, or a footer key. "
                    "States: alive green, suspect yellow, dead red, left grey; ★ is the leader.",
                    style="grey70",
                )
            )


class PromptScreen(ModalScreen[str | None]):
    """Asks for one line; dismisses with the text, or None on esc."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, example: str = "") -> None:
        super().__init__()
        self._title = title
        self._example = example

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self._title, style="bold"), classes="dialog-title")
            if self._example:
                yield Static(Text(self._example, style="grey70"))
            yield Input(id="prompt")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class NodePicker(ModalScreen[str | None]):
    """Choose one name from a list; dismisses with it, or None on esc."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, names: Sequence[str]) -> None:
        super().__init__()
        self._title = title
        self._names = list(names)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self._title, style="bold"), classes="dialog-title")
            yield OptionList(*(Option(n, id=n) for n in self._names), id="picker")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True on y/enter, False on n/esc."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("enter", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self._question, style="bold"), classes="dialog-title")
            yield Static(Text("y / enter: yes    n / esc: no", style="grey70"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
