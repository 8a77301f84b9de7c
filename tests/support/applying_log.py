"""A fake Raft proposer for the task-write tests: it applies each command at once.

``propose(data)`` yields to the loop once (a real commit is never synchronous, so
writes queued in one pass stay together), then either raises ``fail`` (a commit that
fails: leadership changed, no quorum) or applies the command to a real
``StateMachine`` at the next index and records its op in ``entries``.  Used by the
``CommitBatcher`` and ``task.submit_many`` tests, whose subject is what is proposed.
"""

from __future__ import annotations

import asyncio

from agent.state import StateMachine, decode_command
from agent.state.machine import ApplyResult


class Log:
    """Applies proposed commands in order; ``entries`` lists their ops."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.entries: list[str] = []
        self.fail: Exception | None = None

    async def propose(self, data: bytes) -> ApplyResult:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.entries.append(decode_command(data).op)
        return self.sm.apply(len(self.entries), data)
