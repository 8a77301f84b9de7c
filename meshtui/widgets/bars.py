"""The bars every area screen shares: the navigation line and the status banner."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from meshtui.model import MeshModel
from meshtui.ops import Operation

AREAS: tuple[tuple[str, str], ...] = (
    ("mesh", "Mesh"),
    ("consensus", "Consensus"),
    ("tasks", "Tasks"),
    ("migrations", "Migrations"),
    ("metrics", "Metrics"),
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
        # The app's current cluster (``x`` switches between several ``-t`` targets).
        self._target = str(getattr(self.app, "target_label", self._target))
        clusters = getattr(self.app, "cluster_labels", ())
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
        if len(clusters) > 1:
            index = list(clusters).index(self._target) + 1 if self._target in clusters else 0
            text.append(f" [{index}/{len(clusters)} x:switch]", style="grey70")
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


PROGRESS_CELLS = 12


def progress_bar(fraction: float | None, width: int = PROGRESS_CELLS) -> Text:
    """``▕██████░░░░░░▏``; an unknown fraction is drawn hollow."""
    if fraction is None:
        return Text("▕" + "·" * width + "▏", style="grey50")
    filled = max(0, min(width, round(fraction * width)))
    bar = Text("▕", style="grey50")
    bar.append("█" * filled, style="green" if fraction >= 1.0 else "#5fafff")
    bar.append("░" * (width - filled), style="grey35")
    bar.append("▏", style="grey50")
    return bar


class OpsBar(Static):
    """Operations started from the TUI and their progress, newest last; hidden when none."""

    def show(self, ops: list[Operation], model: MeshModel, now: float) -> None:
        lines = [op for op in ops if op.visible(now)][-3:]
        if not lines:
            self.display = False
            return
        out = Text(no_wrap=True, overflow="ellipsis")
        for n, op in enumerate(lines):
            text, fraction, finished = op.progress(model, now)
            if n:
                out.append("\n")
            mark, style = ("✔", "green") if finished and not op.error else ("⟳", "#5fafff")
            if op.error or (finished and fraction is None):
                mark, style = "✘", "red"
            out.append(f" {mark} ", style=f"bold {style}")
            out.append(op.title(), style="bold")
            out.append(" ")
            out.append_text(progress_bar(fraction))
            out.append(f" {text}", style=style if finished else "")
            out.append(f"  {max(0.0, (op.done_at or now) - op.started):.0f}s", style="grey50")
        self.update(out)
        self.display = True
