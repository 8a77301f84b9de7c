"""The bars every area screen shares: the navigation line and the status banner."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from meshtui.model import MeshModel

AREAS: tuple[tuple[str, str], ...] = (
    ("mesh", "Mesh"),
    ("consensus", "Consensus"),
    ("tasks", "Tasks"),
    ("migrations", "Migrations"),
)

_CONN_STYLE = {
    "connected": "bold green",
    "connecting": "yellow",
    "disconnected": "bold red",
    "reconnecting": "bold red",
}


class NavBar(Static):
    """``meshtui │ 1 Mesh 2 Consensus … │ target ● state``; area names are clickable."""

    def __init__(self, area: str, target: str) -> None:
        super().__init__("", markup=False)
        self._area = area
        self._target = target

    def show(self, model: MeshModel) -> None:
        text = Text()
        text.append(" meshtui ", style="bold black on #5fafff")
        text.append(" ")
        for n, (area, title) in enumerate(AREAS, start=1):
            style = "bold reverse #5fafff" if area == self._area else "#87afd7"
            click = Style.from_meta({"@click": f"app.switch_area({area!r})"})
            text.append(f" {n} {title} ", style=Style.parse(style) + click)
            text.append(" ")
        state = model.connection.state
        text.append("  │ ", style="grey50")
        text.append(self._target, style="bold")
        if model.node:
            text.append(f" ({model.node})", style="grey70")
        text.append(" ● ", style=_CONN_STYLE.get(state, "white"))
        text.append(state, style=_CONN_STYLE.get(state, "white"))
        self.update(text)


class Banner(Static):
    """A one-line alert (disconnected, no quorum, connecting); hidden when all is well."""

    def show(self, model: MeshModel) -> None:
        banner = model.banner()
        self.remove_class("error", "warning", "info")
        if banner is None:
            self.display = False
            return
        level, text = banner
        self.add_class(level)
        self.update(Text(f" {text} "))
        self.display = True
