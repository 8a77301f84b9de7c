"""The one way a test waits for something: poll a condition against a deadline.

Tests of real processes and sockets often have no event to await (an agent's
status over its control socket, a file another process writes), so they poll.
Every poll in the suite goes through here, so every one behaves the same:

* ``predicate`` is called at once, then every ``interval`` seconds, and once
  more after the deadline (a slow last sleep does not cost the last look);
* its first truthy value is returned (``rows = wait_until(..., lambda: ...)``);
* at the deadline it raises ``AssertionError`` naming ``what`` it waited for,
  the last falsy value if that says more than ``False``/``None``, and
  ``detail()`` when given (logs, the last status: computed only on failure).

Exceptions from ``predicate`` propagate: a predicate that expects transient
errors (an agent still starting) catches them itself and returns a falsy value.

Prefer an event (``asyncio.Event``, a queue, a subscription) when the code under
test offers one; to show that something does *not* happen, wait on whatever
would reveal it (an event stream, a counter) rather than sleeping blind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL = 0.05
"""Seconds between polls of a real process or socket (cheap, and 20 looks a second)."""

DEFAULT_ASYNC_INTERVAL = 0.02
"""Seconds between polls on the running event loop (in-process state changes fast)."""

_LAST_VALUE_CHARS = 300
"""The last falsy value is cut to this many characters in the failure message."""


def wait_until(
    what: str,
    predicate: Callable[[], T],
    timeout: float,
    interval: float = DEFAULT_INTERVAL,
    *,
    detail: Callable[[], object] | None = None,
) -> T:
    """Block until ``predicate()`` is truthy and return that value; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_timed_out(what, timeout, value, detail))
        time.sleep(min(interval, remaining))


async def wait_until_async(
    what: str,
    predicate: Callable[[], T],
    timeout: float,
    interval: float = DEFAULT_ASYNC_INTERVAL,
    *,
    detail: Callable[[], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """``wait_until`` for a coroutine: the loop keeps running between polls.

    ``sleep`` replaces ``asyncio.sleep`` where the wait must also let something
    else settle (a Textual pilot passes ``pilot.pause``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(_timed_out(what, timeout, value, detail))
        await sleep(min(interval, remaining))


def _timed_out(what: str, timeout: float, last: object, detail: Callable[[], object] | None) -> str:
    message = f"timed out after {timeout:g} s waiting for {what}"
    if last is not None and last is not False:
        shown = repr(last)
        if len(shown) > _LAST_VALUE_CHARS:
            shown = shown[:_LAST_VALUE_CHARS] + "..."
        message += f" (last value: {shown})"
    if detail is not None:
        message += f"\n{detail()}"
    return message
