"""``AreaScreen``: the frame shared by the four area screens (nav, banner, body, filter, footer).

The app owns the model and the connection; an area screen only draws.  The app
calls ``refresh_from(model)`` on the visible screen when the model changed, and
a screen redraws everything when it is shown again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Protocol, cast

from rich.console import RenderableType
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static

from meshtui.model import ClientLike, DemoControls, MeshModel
from meshtui.ops import Operation
from meshtui.widgets.bars import Banner, NavBar, OpsBar
from meshtui.widgets.filterbar import FilterBar

_UNSET = object()


class MeshAppLike(Protocol):
    """What screens use of the app (``meshtui.app.MeshApp`` implements it)."""

    model: MeshModel
    client: ClientLike | None
    demo_controls: DemoControls | None
    target_label: str

    @property
    def operations(self) -> list[Operation]: ...

    def now(self) -> float: ...

    def start_operation(self, kind: str, target: str) -> None: ...

    def call_client(
        self,
        method: str,
        params: dict[str, Any],
        done: str | Callable[[Any], Awaitable[None] | None] | None = None,
    ) -> None: ...


class AreaScreen(Screen[None]):
    """Base of the Mesh/Consensus/Tasks/Migrations screens."""

    AREA: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "open_filter", "Filter"),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_text = ""
        self._drawn: dict[str, int] = {}
        self._last_draw: dict[str, float] = {}
        self._trailing: set[str] = set()
        self._static_keys: dict[str, object] = {}

    @property
    def mesh(self) -> MeshAppLike:
        return cast(MeshAppLike, self.app)

    def compose(self) -> ComposeResult:
        yield NavBar(self.AREA, self.mesh.target_label)
        yield Banner(id="banner")
        yield OpsBar(id="ops")
        yield from self.compose_body()
        yield FilterBar()
        yield Footer()

    def compose_body(self) -> Iterable[Widget]:
        raise AssertionError("area screens override compose_body")

    def on_mount(self) -> None:
        self.query_one(OpsBar).display = False
        self.refresh_from(self.mesh.model, force=True)

    def forget_drawn(self) -> None:
        """The model was replaced (another cluster): draw everything again."""
        self._drawn.clear()
        self._static_keys.clear()

    def on_screen_resume(self) -> None:
        self.refresh_from(self.mesh.model, force=True)

    def refresh_from(self, model: MeshModel, force: bool = False) -> None:
        # Updating a Static re-lays out the screen (and so repaints big tables):
        # only touch the bars when what they show moved.
        if self.changed(model, "banner", force=force):
            self.query_one(NavBar).show(model)
            self.query_one(Banner).show(model)
        ops = self.mesh.operations
        if ops or self.query_one(OpsBar).display:
            self.query_one(OpsBar).show(ops, model, self.mesh.now())
        self.draw(model, force)

    def set_static(self, selector: str, content: RenderableType, key: object = None) -> None:
        """Update a Static only when ``key`` (default: the content itself) changed.

        An update re-lays out the screen, which repaints every table on it.
        """
        key = content if key is None else key
        if self._static_keys.get(selector, _UNSET) != key:
            self._static_keys[selector] = key
            self.query_one(selector, Static).update(content)

    def due(self, key: str, interval: float) -> bool:
        """Rate limit for costly redraws: True at most every ``interval`` seconds per ``key``.

        When it says no, a trailing redraw is scheduled so the last change still shows.
        """
        now = time.monotonic()
        wait = self._last_draw.get(key, -interval) + interval - now
        if wait <= 0:
            self._last_draw[key] = now
            return True
        if key not in self._trailing:
            self._trailing.add(key)

            def trailing() -> None:
                self._trailing.discard(key)
                if self.is_current:
                    self.refresh_from(self.mesh.model)

            self.set_timer(wait, trailing)
        return False

    def draw(self, model: MeshModel, force: bool) -> None:
        """Redraw the body; ``force`` means ignore cached versions."""

    def changed(self, model: MeshModel, *areas: str, force: bool = False) -> bool:
        """True if any of ``areas`` moved since this screen last drew them (and mark them drawn)."""
        moved = force
        for area in areas:
            version = model.versions[area]
            if self._drawn.get(area) != version:
                self._drawn[area] = version
                moved = True
        return moved

    def action_open_filter(self) -> None:
        self.query_one(FilterBar).open()

    def action_back(self) -> None:
        bar = self.query_one(FilterBar)
        if bar.display:
            bar.action_close(clear=True)

    def on_filter_bar_applied(self, event: FilterBar.Applied) -> None:
        self.query_text = event.query
        self.draw(self.mesh.model, force=True)
