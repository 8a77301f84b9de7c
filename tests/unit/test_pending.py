"""``Pending``: a result delivered by direct callback (agent/control/pending.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from agent.control.pending import Pending, as_future


def test_callbacks_run_inside_set_result_in_order() -> None:
    seen: list[tuple[str, Any]] = []
    p: Pending[int] = Pending()
    p.then(lambda arg, done: seen.append((arg, done.result())), "a")
    p.add_done_callback(lambda done: seen.append(("b", done.result())))
    assert not p.done() and not seen
    p.set_result(7)
    assert seen == [("a", 7), ("b", 7)]  # no event loop needed, nothing scheduled
    assert p.done() and not p.cancelled() and p.exception() is None


def test_then_after_resolution_calls_at_once() -> None:
    p: Pending[int] = Pending()
    p.set_exception(ValueError("no"))
    seen: list[BaseException | None] = []
    p.then(lambda _arg, done: seen.append(done.exception()), None)
    assert isinstance(seen[0], ValueError)
    with pytest.raises(ValueError, match="no"):
        p.result()


def test_resolving_twice_or_reading_early_is_an_error() -> None:
    p: Pending[int] = Pending()
    with pytest.raises(asyncio.InvalidStateError):
        p.result()
    with pytest.raises(asyncio.InvalidStateError):
        p.exception()
    p.set_result(1)
    with pytest.raises(asyncio.InvalidStateError):
        p.set_result(2)
    with pytest.raises(asyncio.InvalidStateError):
        p.set_exception(ValueError())


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    p: Pending[int] = Pending()

    def boom(_arg: object, _done: Pending[int]) -> None:
        raise RuntimeError("callback failed")

    p.then(boom, None)
    p.then(lambda _arg, done: seen.append(done.result()), None)
    with caplog.at_level(logging.ERROR, logger="agent.control.pending"):
        p.set_result(3)  # the resolver (the Raft apply loop) is not interrupted
    assert seen == [3]
    assert "callback of a resolved request failed" in caplog.text


def test_await_before_and_after_resolution() -> None:
    async def main() -> None:
        early: Pending[str] = Pending()
        asyncio.get_running_loop().call_soon(early.set_result, "x")
        assert await early == "x"
        late: Pending[str] = Pending()
        late.set_result("y")
        assert await late == "y"
        failed: Pending[str] = Pending()
        asyncio.get_running_loop().call_soon(failed.set_exception, KeyError("k"))
        with pytest.raises(KeyError):
            await failed
        waited: Pending[int] = Pending()
        fut = as_future(waited)
        waited.set_result(5)
        done, _ = await asyncio.wait({fut}, timeout=5)
        assert done == {fut} and fut.result() == 5

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_result_to_the_others() -> None:
    async def main() -> None:
        p: Pending[int] = Pending()
        waiter = asyncio.ensure_future(_await(p))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        p.set_result(1)  # its loop future is already cancelled: skipped quietly
        assert await p == 1

    asyncio.run(main())


async def _await(p: Pending[int]) -> int:
    return await p
