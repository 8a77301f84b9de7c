"""Forwarder (agent/runtime/forwarding.py): a forwarded write unanswered for
``resend_after`` goes again (Retarget) when its command can be resent; one that
cannot waits for its deadline; a leader change resends those sent elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import NoQuorumError
from agent.runtime.forwarding import Forwarder, Retarget, result_answer
from agent.state.machine import ApplyResult

Sent = list[tuple[str, object]]


async def _start(fwd: Forwarder, leader: str, resendable: bool) -> tuple[asyncio.Task[ApplyResult], Sent]:
    sent: Sent = []
    task = asyncio.ensure_future(
        fwd.forward(leader, b"cmd", lambda to, msg: sent.append((to, msg)), resendable=resendable)
    )
    await asyncio.sleep(0)
    return task, sent


async def test_an_unanswered_resendable_write_is_handed_back_for_resending() -> None:
    fwd = Forwarder(answer_within=10.0, resend_after=1.0)
    now = asyncio.get_running_loop().time()
    task, sent = await _start(fwd, "L", resendable=True)
    assert len(sent) == 1
    fwd.expire(now + 0.5)
    assert not task.done()
    fwd.expire(now + 1.5)
    with pytest.raises(Retarget):
        await task


async def test_a_write_without_a_rid_is_never_resent_and_fails_at_its_deadline() -> None:
    fwd = Forwarder(answer_within=3.0, resend_after=1.0)
    now = asyncio.get_running_loop().time()
    plain, _ = await _start(fwd, "L", resendable=False)
    resendable, _ = await _start(fwd, "L", resendable=True)
    fwd.expire(now + 1.5)  # the plain one is skipped, the one behind it still resent
    assert not plain.done()
    with pytest.raises(Retarget):
        await resendable
    fwd.expire(now + 3.5)
    with pytest.raises(NoQuorumError):
        await plain


async def test_an_answer_before_the_resend_time_is_the_result() -> None:
    fwd = Forwarder(answer_within=10.0, resend_after=1.0)
    task, sent = await _start(fwd, "L", resendable=True)
    (_, msg), = sent
    fwd.answer(result_answer(msg.request_id, ApplyResult(True, 7, None)))  # type: ignore[attr-defined]
    result = await task
    assert result.ok and result.value == 7


async def test_a_leader_change_resends_only_what_went_elsewhere() -> None:
    fwd = Forwarder(answer_within=10.0)
    to_old, _ = await _start(fwd, "old", resendable=False)
    to_new, _ = await _start(fwd, "new", resendable=False)
    fwd.retarget("new")
    with pytest.raises(Retarget):
        await to_old
    assert not to_new.done()
    to_new.cancel()
