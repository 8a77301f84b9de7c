"""Operations started from the TUI (drain, undrain, transfer leadership, cancel) and their progress.

An ``Operation`` is created when the operator confirms it, sent as one control
call, and then watched in the model: its ``progress(model, now)`` says how far
it got from what the mesh reports (tasks still on a draining node, who leads,
the task's state).  Pure: no I/O, no clock (``now`` comes from the caller), so
the ops bar renders the same in snapshot tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshtui.model import FINISHED_TASK_STATES, MeshModel

TRANSFER_TIMEOUT = 15.0
"""Seconds a leadership transfer may take before the bar calls it failed
(an election timeout or two on the LAN, with room for a loaded host)."""
SHOWN_AFTER_DONE = 15.0
"""Seconds a finished operation stays in the ops bar."""


def tasks_on(model: MeshModel, node: str) -> list[str]:
    """Unfinished tasks the model places on ``node``."""
    return [
        tid
        for tid, t in model.tasks.items()
        if t.get("node") == node and t.get("state") not in FINISHED_TASK_STATES
    ]


@dataclass(slots=True)
class Operation:
    """One confirmed operation: what was asked, and what the mesh has shown since."""

    kind: str
    """``drain``, ``undrain``, ``transfer`` or ``cancel``."""
    target: str
    """A node name (drain, undrain, transfer: "" = any voter) or a task id (cancel)."""
    started: float
    method: str
    params: dict[str, Any]
    baseline: tuple[str, ...] = ()
    """Drain: the node's tasks when asked.  Transfer: the leader when asked (one item)."""
    sent: bool = False
    error: str = ""
    done_at: float | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, kind: str, target: str, model: MeshModel, now: float, rid: str) -> Operation:
        if kind in ("drain", "undrain"):
            baseline = tuple(tasks_on(model, target)) if kind == "drain" else ()
            return cls(kind, target, now, f"node.{kind}", {"node": target, "rid": rid}, baseline)
        if kind == "transfer":
            leader = model.consensus.leader or ""
            return cls(kind, target, now, "leader.transfer", {"to": target or None}, (leader,))
        if kind == "cancel":
            return cls(kind, target, now, "task.cancel", {"id": target, "rid": rid})
        raise ValueError(f"unknown operation {kind!r}")

    def title(self) -> str:
        if self.kind == "transfer":
            return f"transfer leadership → {self.target or 'any voter'}"
        if self.kind == "cancel":
            return f"cancel task {self.target[:12]}"
        return f"{self.kind} {self.target}"

    def question(self) -> str:
        """The confirmation question."""
        if self.kind == "drain":
            n = len(self.baseline)
            return (f"Drain {self.target}? No new tasks will be placed there and its "
                    f"{n} task{'s' if n != 1 else ''} move elsewhere.")
        if self.kind == "undrain":
            return f"Undrain {self.target}? It accepts tasks again."
        if self.kind == "transfer":
            to = self.target or "the best voter"
            return f"Transfer Raft leadership from {self.baseline[0] or '?'} to {to}?"
        return f"Cancel task {self.target}? Its process is killed."

    def progress(self, model: MeshModel, now: float) -> tuple[str, float | None, bool]:
        """(what the mesh shows, fraction done or None, finished) — and marks it done."""
        text, fraction, finished = self._measure(model, now)
        if finished and self.done_at is None:
            self.done_at = now
        return text, fraction, finished

    def _measure(self, model: MeshModel, now: float) -> tuple[str, float | None, bool]:
        if self.error:
            return f"failed: {self.error}", None, True
        if not self.sent:
            return "sending…", 0.0, False
        if self.kind == "drain":
            return self._drain_progress(model)
        if self.kind == "undrain":
            member = model.members.get(self.target)
            if member is not None and not member.draining:
                return "accepting tasks again", 1.0, True
            return "waiting for the mesh to report it…", 0.5, False
        if self.kind == "transfer":
            return self._transfer_progress(model, now)
        task = model.tasks.get(self.target)
        state = str(task.get("state")) if task else "?"
        if state in FINISHED_TASK_STATES:
            return f"task is {state}", 1.0, True
        return f"task is {state}…", 0.5, False

    def _drain_progress(self, model: MeshModel) -> tuple[str, float | None, bool]:
        member = model.members.get(self.target)
        left = tasks_on(model, self.target)
        total = max(len(self.baseline), len(left))
        moved = [t for t in self.baseline if t not in left]
        marked = member is not None and member.draining
        if not left and (marked or member is None):
            text = f"drained: {len(moved)} of {len(self.baseline)} tasks moved or finished, none left"
            return text, 1.0, True
        if not left and not marked:
            return f"asked; waiting for the mesh to mark {self.target} draining", 0.5, False
        fraction = len(moved) / total if total else 1.0
        where = ", ".join(
            f"{tid[:8]}→{model.tasks[tid].get('node') or '?'}" for tid in moved[-3:] if tid in model.tasks
        )
        shown = f" ({where})" if where else ""
        plural = "s" if len(left) != 1 else ""
        return f"{len(left)} task{plural} still on {self.target}, {len(moved)} moved{shown}", fraction, False

    def _transfer_progress(self, model: MeshModel, now: float) -> tuple[str, float | None, bool]:
        leader = model.consensus.leader
        before = self.baseline[0] if self.baseline else ""
        if leader and ((self.target and leader == self.target) or (not self.target and leader != before)):
            return f"{leader} leads (term {model.consensus.term})", 1.0, True
        if now - self.started > TRANSFER_TIMEOUT:
            return f"leader still {leader or 'none'} after {TRANSFER_TIMEOUT:g}s", None, True
        wanted = self.target or "a new leader"
        return f"waiting for {wanted} to take over (leader {leader or 'none'})", 0.5, False

    def visible(self, now: float) -> bool:
        return self.done_at is None or now - self.done_at <= SHOWN_AFTER_DONE
