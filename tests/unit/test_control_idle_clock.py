"""A control client's idle clock restarts when its last running request is answered.

The idle check runs on a timer: when it finds the client busy it re-arms one
timeout later.  If the work ends just after such a check, the client must still
get a full timeout to send its next request, measured from the reply, not from
the check (CI once closed a client 0.5 s after a check that was almost 0.5 s
before the reply).  Driven with a stand-in loop clock, so no timing is involved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.control.session import MAX_IN_FLIGHT, ControlSession, Handler

TIMEOUT = 0.5


class Host:
    idle_timeout = TIMEOUT
    handlers: Mapping[str, Handler] = {}
    topics: frozenset[str] = frozenset()

    def count_topics(self, topics: frozenset[str], delta: int) -> None:
        pass


class Writer:
    def __init__(self) -> None:
        self.closed = False
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


class Clock:
    """The loop parts the idle check uses: ``time`` and ``call_later``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Any:
        self.timers.append((self.now + delay, callback))
        return None


async def session_with_clock() -> tuple[ControlSession, Writer, Clock]:
    writer = Writer()
    session = ControlSession(Host(), None, writer)  # type: ignore[arg-type]
    clock = Clock()
    session.loop = clock  # type: ignore[assignment]
    session.last_request = 0.0
    return session, writer, clock


async def test_a_reply_just_after_a_busy_check_gets_a_full_timeout() -> None:
    session, writer, clock = await session_with_clock()
    session.free_slots = MAX_IN_FLIGHT - 1  # one request running
    clock.now = 10.0
    session._idle_check()  # busy: re-armed for 10.5
    assert clock.timers[-1][0] == 10.5 and not writer.closed

    clock.now = 10.45
    session._release_slots()  # the reply went out 0.05 s before the next check

    clock.now = 10.5
    session._idle_check()  # only 0.05 s since the reply: not idle
    assert not writer.closed
    assert clock.timers[-1][0] == 10.95

    clock.now = 10.95
    session._idle_check()  # a full timeout since the reply, no request: closed
    assert writer.closed


async def test_a_reply_with_requests_still_running_does_not_restart_the_clock() -> None:
    session, _writer, clock = await session_with_clock()
    session.free_slots = MAX_IN_FLIGHT - 2
    clock.now = 3.0
    session._release_slots()  # one of two answered: still busy
    assert session.last_request == 0.0
    assert session._busy()
