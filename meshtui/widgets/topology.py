"""Topology view: members on a circle, links drawn with braille dots, coloured by RTT.

``BrailleCanvas`` is a pure character canvas: each terminal cell holds a 2x4
grid of braille dots, so lines are drawn at twice the horizontal and four times
the vertical resolution of the terminal.  Nodes and labels are then written on
top as ordinary characters.  Only links the attached agent has measured are
drawn (its SWIM probe RTT to each peer): the TUI shows what is known, it does
not invent a full mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from meshtui.model import MeshModel
from meshtui.widgets.render import STATE_STYLE, rtt_style

DENSE_LINKS = 48
"""Above this many members only leader/suspect/dead links are drawn."""

# Braille dot bit for (x, y) inside a cell, x in 0..1, y in 0..3.
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


class BrailleCanvas:
    """A width x height character canvas with braille line drawing and text overlay."""

    def __init__(self, width: int, height: int) -> None:
        self.width = max(width, 1)
        self.height = max(height, 1)
        self._dots = [[0] * self.width for _ in range(self.height)]
        self._dot_style: list[list[str]] = [[""] * self.width for _ in range(self.height)]
        self._text: dict[tuple[int, int], tuple[str, str]] = {}

    @property
    def pixel_size(self) -> tuple[int, int]:
        return self.width * 2, self.height * 4

    def dot(self, px: int, py: int, style: str) -> None:
        cx, cy = px // 2, py // 4
        if 0 <= cx < self.width and 0 <= cy < self.height and px >= 0 and py >= 0:
            self._dots[cy][cx] |= _DOT_BITS[px % 2][py % 4]
            self._dot_style[cy][cx] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str, dotted: bool = False) -> None:
        """Bresenham line in pixel coordinates; ``dotted`` skips every other pair of dots."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx = 1 if x0 < x1 else -1
        sy = 1 if y0 < y1 else -1
        err = dx + dy
        step = 0
        while True:
            if not dotted or (step // 2) % 2 == 0:
                self.dot(x0, y0, style)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy
            step += 1

    def is_free(self, x: int, y: int, length: int) -> bool:
        """True if ``length`` cells from (x, y) are on the canvas and carry no text."""
        if y < 0 or y >= self.height or x < 0 or x + length > self.width:
            return False
        return all((x + i, y) not in self._text for i in range(length))

    def text(self, x: int, y: int, s: str, style: str) -> None:
        for i, ch in enumerate(s):
            if 0 <= x + i < self.width and 0 <= y < self.height:
                self._text[(x + i, y)] = (ch, style)

    def cells(self) -> list[list[tuple[str, str]]]:
        """Every row as (char, style) cells, text over dots."""
        rows = []
        for y in range(self.height):
            row = []
            for x in range(self.width):
                cell = self._text.get((x, y))
                if cell is None:
                    dots = self._dots[y][x]
                    cell = (chr(0x2800 + dots), self._dot_style[y][x]) if dots else (" ", "")
                row.append(cell)
            rows.append(row)
        return rows

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for y in range(self.height):
            run_chars: list[str] = []
            run_style = ""
            for x in range(self.width):
                cell = self._text.get((x, y))
                if cell is not None:
                    ch, style = cell
                elif self._dots[y][x]:
                    ch, style = chr(0x2800 + self._dots[y][x]), self._dot_style[y][x]
                else:
                    ch, style = " ", ""
                if style != run_style and run_chars:
                    out.append("".join(run_chars), style=run_style or None)
                    run_chars = []
                run_style = style
                run_chars.append(ch)
            if run_chars:
                out.append("".join(run_chars), style=run_style or None)
            if y < self.height - 1:
                out.append("\n")
        return out


@dataclass(frozen=True, slots=True)
class TopoNode:
    name: str
    state: str
    rtt_ms: float | None
    """Only its colour bucket matters; ``snapshot`` rounds it to a bucket representative."""
    leader: bool
    local: bool


# One representative RTT per link colour, so polls that move RTT by a few
# microseconds do not redraw the topology.
_RTT_BUCKETS = ((1.0, 0.5), (10.0, 5.0), (50.0, 20.0))


def rtt_bucket(rtt_ms: float | None) -> float | None:
    if rtt_ms is None:
        return None
    for bound, representative in _RTT_BUCKETS:
        if rtt_ms < bound:
            return representative
    return 80.0


def snapshot(model: MeshModel) -> tuple[TopoNode, ...]:
    """What the topology draws, as a hashable value (cache key for rendering)."""
    leader = model.consensus.leader
    return tuple(
        TopoNode(m.name, m.state, rtt_bucket(m.rtt_ms), m.name == leader, m.name == model.node)
        for m in sorted(model.members.values(), key=lambda m: m.name)
    )


def draw(nodes: tuple[TopoNode, ...], width: int, height: int) -> Text:
    """Lay ``nodes`` out on a circle in a width x height box and draw it (as Rich Text)."""
    canvas = layout(nodes, width, height)
    out = canvas.render()
    if height > 6:
        out.append("\n")
        out.append_text(_legend(width))
    return out


def draw_strips(nodes: tuple[TopoNode, ...], width: int, height: int) -> list[Strip]:
    """The same drawing as terminal lines, built without Rich's text layout (fast path)."""
    canvas = layout(nodes, width, height)
    strips = []
    for row in canvas.cells():
        segments: list[Segment] = []
        run: list[str] = []
        run_style = ""
        for ch, style in row:
            if style != run_style and run:
                segments.append(Segment("".join(run), _style(run_style)))
                run = []
            run_style = style
            run.append(ch)
        if run:
            segments.append(Segment("".join(run), _style(run_style)))
        strips.append(Strip(segments, width))
    if height > 6:
        legend = _legend(width)
        legend.pad_right(max(width - legend.cell_len, 0))
        strips.append(Strip(list(legend.render(Console(width=width))), width))
    return strips


def _style(name: str) -> Style | None:
    return Style.parse(name) if name else None


def layout(nodes: tuple[TopoNode, ...], width: int, height: int) -> BrailleCanvas:
    """Nodes on a circle, links from the attached node, labels where they fit."""
    legend_rows = 1 if height > 6 else 0
    canvas = BrailleCanvas(width, height - legend_rows)
    if not nodes:
        canvas.text(1, 0, "no members yet", "grey50")
        return canvas
    pw, ph = canvas.pixel_size
    cx, cy = pw / 2, ph / 2
    # Braille pixels are about square; keep room for a label on each side.
    radius = max(min(pw / 2 - 12, ph / 2 - 4), 1.0)
    n = len(nodes)
    pos: list[tuple[int, int]] = []
    for i in range(n):
        angle = 2 * math.pi * i / n - math.pi / 2
        pos.append((round(cx + radius * math.cos(angle)), round(cy + radius * math.sin(angle))))
    local = next((i for i, node in enumerate(nodes) if node.local), None)
    # Past DENSE_LINKS members a full star is a solid blob that costs a redraw
    # budget: then only the links worth seeing (leader, suspect, dead) are drawn.
    dense = n > DENSE_LINKS
    if local is not None:
        lx, ly = pos[local]
        for i, node in enumerate(nodes):
            if i == local or node.state == "left":
                continue
            if dense and node.state == "alive" and not node.leader:
                continue
            unreachable = node.state == "dead" or node.rtt_ms is None
            style = "red" if node.state == "dead" else rtt_style(node.rtt_ms)
            canvas.line(lx, ly, pos[i][0], pos[i][1], style, dotted=unreachable)
    show_labels = n <= 64
    # Leader and local node first so their labels win a crowded spot.
    order = sorted(range(n), key=lambda i: (not nodes[i].leader, not nodes[i].local, i))
    for i in order:
        node = nodes[i]
        x, y = pos[i][0] // 2, pos[i][1] // 4
        style = STATE_STYLE.get(node.state, "white")
        glyph = "★" if node.leader else ("◉" if node.local else "●")
        canvas.text(x, y, glyph, style)
        if not (show_labels or node.leader or node.local):
            continue
        label = node.name
        if pos[i][0] >= cx:
            if canvas.is_free(x + 2, y, len(label)):
                canvas.text(x + 2, y, label, style)
        elif canvas.is_free(x - 1 - len(label), y, len(label)):
            canvas.text(x - 1 - len(label), y, label, style)
    return canvas


def _legend(width: int) -> Text:
    legend = Text(no_wrap=True, overflow="crop")
    legend.append(" ★ leader ◉ here  rtt ", style="grey70")
    for label, rtt in (("<1", 0.5), ("<10", 5.0), ("<50", 20.0), ("≥50ms", 80.0)):
        legend.append("⣀⣀", style=rtt_style(rtt))
        legend.append(f"{label} ", style="grey70")
    legend.append("⠤⠀⠤", style="grey42")
    legend.append("none", style="grey70")
    legend.truncate(width)
    return legend


class Topology(Widget):
    """Paints ``draw_strips(snapshot(model))`` line by line, cached by data and size."""

    DEFAULT_CSS = """
    Topology { height: 1fr; }
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._topo_nodes: tuple[TopoNode, ...] = ()
        self._strips: list[Strip] = []
        self._drawn_for: tuple[tuple[TopoNode, ...], int, int] | None = None

    def show(self, model: MeshModel) -> None:
        nodes = snapshot(model)
        if nodes != self._topo_nodes:
            self._topo_nodes = nodes
            self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        key = (self._topo_nodes, width, height)
        if key != self._drawn_for:
            base = self.rich_style  # the widget's CSS colours under the drawing
            self._strips = [strip.apply_style(base) for strip in draw_strips(self._topo_nodes, width, height)]
            self._drawn_for = key
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.rich_style)
