"""Command palette provider: submit, cancel, drain, undrain, transfer leadership."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Callable
from functools import partial
from typing import cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

from meshtui.model import FINISHED_TASK_STATES
from meshtui.screens.base import MeshAppLike
from meshtui.screens.dialogs import PromptScreen

Command = tuple[str, str, Callable[[], None]]


def new_rid() -> str:
    """Idempotency id for a state-changing request."""
    return uuid.uuid4().hex


SHELL_ONLY = frozenset("$`*?~")
"""Characters a shell would expand; a line using them (or an operator) runs under ``sh -c``."""


def submit_params(line: str) -> dict[str, object]:
    """``task.submit`` params for a command line typed in the palette.

    Plain command lines become ``argv``; one with an unquoted shell operator
    (``|``, ``&&``, ``;``, ``>``, ...) or expansion characters is sent as ``shell``.
    """
    line = line.strip()
    if not line:
        raise ValueError("empty command line")
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    operators = any(tok and all(ch in lexer.punctuation_chars for ch in tok) for tok in tokens)
    if operators or SHELL_ONLY & set(line):
        return {"shell": line, "rid": new_rid()}
    return {"argv": shlex.split(line), "rid": new_rid()}


class MeshCommands(Provider):
    """Commands built from the current model each time the palette opens or searches."""

    @property
    def mesh(self) -> MeshAppLike:
        return cast(MeshAppLike, self.app)

    def _submit(self) -> None:
        def submitted(line: str | None) -> None:
            if not line:
                return
            try:
                params = submit_params(line)
            except ValueError as exc:
                self.app.notify(f"cannot submit: {exc}", severity="error")
                return
            self.mesh.call_client("task.submit", params, done="submitted")

        self.app.push_screen(
            PromptScreen(
                "Submit a task",
                "a command line, e.g. python3 -c 'print(42)'; pipes and && run under sh -c",
            ),
            submitted,
        )

    def commands(self) -> list[Command]:
        mesh = self.mesh
        model = mesh.model
        call = mesh.call_client
        out: list[Command] = [
            ("Submit task…", "run a command line on the mesh", self._submit),
            (
                "Transfer leadership (any)",
                "ask the leader to hand over to the best voter",
                partial(call, "leader.transfer", {"to": None}, "leadership transfer requested"),
            ),
        ]
        for name in sorted(model.members):
            out.append(
                (
                    f"Drain {name}",
                    "stop placing tasks on this node and move its queued tasks",
                    partial(call, "node.drain", {"node": name}, f"draining {name}"),
                )
            )
            out.append(
                (
                    f"Undrain {name}",
                    "accept tasks on this node again",
                    partial(call, "node.undrain", {"node": name}, f"undrained {name}"),
                )
            )
        for name in model.consensus.voters or tuple(sorted(model.members)):
            if name != model.consensus.leader:
                out.append(
                    (
                        f"Transfer leadership to {name}",
                        "hand Raft leadership to this voter",
                        partial(call, "leader.transfer", {"to": name}, f"leadership → {name}"),
                    )
                )
        for tid, task in model.tasks.items():
            if task.get("state") not in FINISHED_TASK_STATES:
                cmd = task.get("cmd")
                shown = " ".join(map(str, cmd)) if isinstance(cmd, list | tuple) else str(cmd)
                out.append(
                    (
                        f"Cancel task {tid[:12]}",
                        f"{task.get('state')}: {shown}",
                        partial(
                            call,
                            "task.cancel",
                            {"id": tid, "rid": new_rid()},
                            f"cancelled {tid[:12]}",
                        ),
                    )
                )
        return out

    async def discover(self) -> Hits:
        for title, help_text, callback in self.commands():
            if title.startswith(("Submit", "Transfer leadership (any)")):
                yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self.commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
