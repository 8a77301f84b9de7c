"""A result handed to its waiter by a direct call, not through the event loop.

Theory of operation: a leader answers a client write from its apply loop.  With
an ``asyncio.Future`` per write, ``set_result`` schedules each done-callback
with ``call_soon`` -- a handle per write and a pass of the loop before the
control session can encode the reply; on the standard asyncio loop that costs a
Python ``Handle`` and its dispatch per write.  A :class:`Pending` calls its
callbacks at once, inside ``set_result``/``set_exception``: the apply loop
resolves a whole group-commit batch and every reply is queued in the same pass.

The API is a subset of ``asyncio.Future`` (``done``, ``cancelled``,
``result``, ``exception``, ``set_result``, ``set_exception``,
``add_done_callback``), so code that resolved futures resolves these
unchanged, plus :meth:`Pending.then` (a callback with one argument, no closure
per call).  It is awaitable: awaiting one that is not done yet makes one loop
future for that waiter.  A callback that raises is logged and does not stop the
others or the code that resolved it (as asyncio does for done-callbacks): the
resolver is the Raft apply loop, which must not fail because a reply could not
be queued.  A ``Pending`` is never cancelled; its producer resolves it exactly
once (the Raft driver fails every unresolved write at its commit timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

_WAITING, _RESULT, _ERROR = 0, 1, 2


class Pending(Generic[T]):
    """A result, or an exception, delivered once by calling its callbacks directly."""

    __slots__ = ("_arg", "_callback", "_error", "_more", "_state", "_value")

    def __init__(self) -> None:
        self._state = _WAITING
        self._value: Any = None
        self._error: BaseException | None = None
        # The first callback in two slots (the usual case: one waiter), any others listed.
        self._callback: Callable[[Any, Pending[T]], object] | None = None
        self._arg: Any = None
        self._more: list[tuple[Callable[[Any, Pending[T]], object], Any]] | None = None

    def done(self) -> bool:
        return self._state != _WAITING

    def cancelled(self) -> bool:
        """Always False: a ``Pending`` cannot be cancelled (the ``Future`` API's name)."""
        return False

    def result(self) -> T:
        """The value; raises the exception it was given, or ``InvalidStateError`` if not done."""
        if self._state == _RESULT:
            value: T = self._value
            return value
        if self._state == _ERROR:
            assert self._error is not None
            raise self._error
        raise asyncio.InvalidStateError("result is not set yet")

    def exception(self) -> BaseException | None:
        if self._state == _WAITING:
            raise asyncio.InvalidStateError("result is not set yet")
        return self._error

    def set_result(self, value: T) -> None:
        if self._state != _WAITING:
            raise asyncio.InvalidStateError("already resolved")
        self._state = _RESULT
        self._value = value
        if self._callback is not None:
            self._run_callbacks()

    def set_exception(self, error: BaseException) -> None:
        if self._state != _WAITING:
            raise asyncio.InvalidStateError("already resolved")
        self._state = _ERROR
        self._error = error
        if self._callback is not None:
            self._run_callbacks()

    def then(self, callback: Callable[[A, Pending[T]], object], arg: A) -> None:
        """Call ``callback(arg, self)`` once resolved (now, if it already is)."""
        if self._state != _WAITING:
            _call(callback, arg, self)
            return
        if self._callback is None:
            self._callback, self._arg = callback, arg
        elif self._more is None:
            self._more = [(callback, arg)]
        else:
            self._more.append((callback, arg))

    def add_done_callback(self, callback: Callable[[Pending[T]], object]) -> None:
        """``Future.add_done_callback``, but called directly (see the module doc)."""
        self.then(_call_one, callback)

    def _run_callbacks(self) -> None:
        callback, arg, more = self._callback, self._arg, self._more
        self._callback = self._arg = self._more = None
        if callback is not None:
            try:  # _call, inline: the usual lone callback, once a write or a reply
                callback(arg, self)
            except Exception:
                log.exception("a callback of a resolved request failed")
        for callback, arg in more or ():
            _call(callback, arg, self)

    def __await__(self) -> Generator[Any, None, T]:
        if self._state == _WAITING:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self.then(_settle, future)
            return (yield from future)
        return self.result()


def as_future(pending: Pending[T]) -> asyncio.Future[T]:
    """A loop future that settles with ``pending`` (for ``asyncio.wait`` and the like)."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    pending.then(_settle, future)
    return future


def _call(callback: Callable[[Any, Pending[Any]], object], arg: Any, pending: Pending[Any]) -> None:
    try:
        callback(arg, pending)
    except Exception:
        log.exception("a callback of a resolved request failed")


def _call_one(callback: Callable[[Pending[Any]], object], pending: Pending[Any]) -> None:
    callback(pending)


def _settle(future: asyncio.Future[Any], pending: Pending[Any]) -> None:
    if future.done():  # its waiter was cancelled
        return
    error = pending.exception()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(pending.result())
