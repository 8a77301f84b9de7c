"""Runs operations for the app: confirm, send one control call, then keep the ops bar ticking.

What an operation is and how far it got is ``meshtui.ops`` (pure); this is the
Textual side: the confirmation dialog, the call, and a once-a-second redraw
while an operation is on screen (its elapsed time moves).
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from textual.app import App

from meshtui.model import ClientLike, MeshModel
from meshtui.ops import Operation
from meshtui.screens.dialogs import ConfirmScreen

KEPT = 20
"""Operations remembered (the bar shows the last few still visible)."""


class OperatorHost(Protocol):
    """What the operator reads of the app (``MeshApp``)."""

    @property
    def model(self) -> MeshModel: ...

    @property
    def client(self) -> ClientLike | None: ...

    def now(self) -> float: ...

    def request_redraw(self) -> None: ...


class Operator:
    def __init__(self, app: App[Any], host: OperatorHost) -> None:
        self._app = app
        self._host = host
        self.operations: list[Operation] = []

    def start(self, kind: str, target: str) -> None:
        """Ask, then send and watch one operation."""
        host = self._host
        op = Operation.make(kind, target, host.model, host.now(), uuid.uuid4().hex)

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            self.operations.append(op)
            del self.operations[:-KEPT]
            client = host.client
            if client is None:
                op.error = "not connected"
            else:
                try:
                    await client.call(op.method, **op.params)
                except Exception as exc:
                    op.error = str(exc)
                else:
                    op.sent = True
            host.request_redraw()
            self._tick()

        self._app.push_screen(ConfirmScreen(op.question()), answered)

    def _tick(self) -> None:
        if any(op.visible(self._host.now()) for op in self.operations):
            self._host.request_redraw()
            self._app.set_timer(1.0, self._tick)
