"""Topology view: members on a circle, links drawn with braille dots, coloured by RTT.

``BrailleCanvas`` is a pure character canvas: each terminal cell holds a 2x4
grid of braille dots, so lines are drawn at twice the horizontal and four times
the vertical resolution of the terminal.  Nodes and labels are then written on
top as ordinary characters.

Links are the agent's own link state (``status.links``: ``{from, to, state,
via, rtt_ms}`` for each pair of hosts it knows about): a direct link is a solid
line coloured by RTT, a link relayed through a third host a magenta dashed
line, a down link a red dotted one.  Each pair is drawn once, in the worse of
its two directions.  When the agent sends no ``links`` nothing is drawn between
hosts: the TUI shows what is known, it does not invent a mesh.  The selected
host's links are drawn last (on top) and listed with their RTT by the screen.
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

from meshtui.model import Link, MeshModel
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


@dataclass(frozen=True, slots=True)
class TopoLink:
    """One pair of hosts as drawn: names in order, the worse direction's state."""

    a: str
    b: str
    state: str
    rtt_ms: float | None


@dataclass(frozen=True, slots=True)
class TopoView:
    """Everything the topology draws, hashable (the render cache key)."""

    nodes: tuple[TopoNode, ...] = ()
    links: tuple[TopoLink, ...] | None = None
    selected: str | None = None


_LINK_RANK = {"direct": 0, "relayed": 1, "down": 2}


def pair_links(links: tuple[Link, ...]) -> tuple[TopoLink, ...]:
    """One ``TopoLink`` per unordered pair: the worse of its directions (down > relayed > direct)."""
    pairs: dict[tuple[str, str], TopoLink] = {}
    for link in links:
        a, b = sorted((link.src, link.dst))
        drawn = TopoLink(a, b, link.state, rtt_bucket(link.rtt_ms))
        old = pairs.get((a, b))
        if old is None or _LINK_RANK[drawn.state] > _LINK_RANK[old.state]:
            pairs[(a, b)] = drawn
    return tuple(pairs[k] for k in sorted(pairs))


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


def snapshot(model: MeshModel, selected: str | None = None) -> TopoView:
    """What the topology draws, as a hashable value (cache key for rendering)."""
    leader = model.consensus.leader
    nodes = tuple(
        TopoNode(m.name, m.state, rtt_bucket(m.rtt_ms), m.name == leader, m.name == model.node)
        for m in sorted(model.members.values(), key=lambda m: m.name)
    )
    links = None if model.links is None else pair_links(model.links)
    return TopoView(nodes, links, selected if selected in model.members else None)


def draw(view: TopoView, width: int, height: int) -> Text:
    """Lay the nodes out on a circle in a width x height box and draw it (as Rich Text)."""
    canvas = layout(view, width, height)
    out = canvas.render()
    if height > 6:
        out.append("\n")
        out.append_text(_legend(width))
    return out


def draw_strips(view: TopoView, width: int, height: int) -> list[Strip]:
    """The same drawing as terminal lines, built without Rich's text layout (fast path)."""
    canvas = layout(view, width, height)
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


def link_style(link: TopoLink) -> tuple[str, bool]:
    """(colour, dotted) for a drawn link."""
    if link.state == "down":
        return "red", True
    if link.state == "relayed":
        return "magenta", True
    return rtt_style(link.rtt_ms), False


def layout(view: TopoView, width: int, height: int) -> BrailleCanvas:
    """Nodes on a circle, the links between them, labels where they fit."""
    nodes = view.nodes
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
    _draw_links(canvas, view, {node.name: pos[i] for i, node in enumerate(nodes)})
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


def _draw_links(canvas: BrailleCanvas, view: TopoView, pos: dict[str, tuple[int, int]]) -> None:
    """Every pair's link; past ``DENSE_LINKS`` hosts only the selected host's and the broken ones
    (a full mesh of hundreds of lines is a solid blob).  The selected host's links go last, on top."""
    if not view.links:
        return
    dense = len(view.nodes) > DENSE_LINKS
    sel = view.selected
    mine = [lk for lk in view.links if sel in (lk.a, lk.b)]
    others = [lk for lk in view.links if sel not in (lk.a, lk.b) and not (dense and lk.state == "direct")]
    for link in others + mine:
        if link.a not in pos or link.b not in pos:
            continue
        style, dotted = link_style(link)
        if sel is not None and link not in mine and link.state == "direct":
            style = "grey30"  # the selected host's links stand out; broken ones always do
        (x0, y0), (x1, y1) = pos[link.a], pos[link.b]
        canvas.line(x0, y0, x1, y1, style, dotted=dotted)


def _legend(width: int) -> Text:
    legend = Text(no_wrap=True, overflow="crop")
    legend.append(" ★lead ◉here ", style="grey70")
    for label, rtt in (("<1", 0.5), ("<10", 5.0), ("<50", 20.0), ("≥50ms", 80.0)):
        legend.append("⣀", style=rtt_style(rtt))
        legend.append(f"{label} ", style="grey70")
    legend.append("⠤", style="magenta")
    legend.append("relay ", style="grey70")
    legend.append("⠤", style="red")
    legend.append("down", style="grey70")
    legend.truncate(width)
    return legend


class Topology(Widget):
    """Paints ``draw_strips(snapshot(model, selected))`` line by line, cached by data and size."""

    DEFAULT_CSS = """
    Topology { height: 1fr; }
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._topo_nodes = TopoView()
        self._strips: list[Strip] = []
        self._drawn_for: tuple[TopoView, int, int] | None = None

    def show(self, model: MeshModel, selected: str | None = None) -> None:
        view = snapshot(model, selected)
        if view != self._topo_nodes:
            self._topo_nodes = view
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
