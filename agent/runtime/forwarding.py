"""Writes a follower forwards to the leader: waiting for the answer, and its encoding.

A follower cannot append to the log, so it sends the encoded command to the
leader (``ForwardPropose`` with a request id) and waits for a
``ForwardResult``: the apply result packed with msgpack, or an error code
(``no_quorum``, ``disk_full``, ``refused``) with a message.  Every request
waits at most ``answer_within`` seconds; the driver's tick sweeps the late
ones (``expire``), failing them with ``NoQuorumError`` -- one sweep per tick
instead of a timer per write.

Leader changes: every waiting request remembers the leader it went to.  When
the driver learns of a new leader (``retarget``), the requests sent elsewhere
fail with ``Retarget`` and the driver sends the same command -- the same
state-machine ``rid`` inside it, so the apply dedup makes a second copy a
no-op -- to the new leader under a fresh request id (a late answer from the
old leader then finds nobody waiting and is dropped).  The same resend
happens when the leader stays but its answer does not come within
``resend_after`` (a frame lost with a broken connection or a failed relay):
the request fails with ``Retarget`` and goes again, to whichever leader is
known then -- only for commands that carry a ``rid`` (``resendable``).  A ``no_quorum`` answer
raises ``LeaderRefused``: the node asked is not (or no longer) a working
leader, so the driver may wait for another one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from agent import wire
from agent.errors import DiskFullError, LocalError, NoQuorumError
from agent.runtime.messages import ForwardPropose, ForwardResult
from agent.state.machine import ApplyResult


class Retarget(Exception):
    """Internal: the leader a request went to was replaced; send it again."""


class LeaderRefused(NoQuorumError):
    """The node a write went to answered ``no_quorum`` (not the leader, or cut off)."""


@dataclass(slots=True)
class _Waiting:
    future: asyncio.Future[ForwardResult]
    deadline: float
    leader: str
    """The node this request went to: ``retarget`` resends the ones sent elsewhere."""
    resend_at: float
    """Loop time after which an unanswered resendable request is sent again (inf: never)."""


class Forwarder:
    """Forwarded writes waiting for the leader's answer, by request id."""

    def __init__(self, answer_within: float, resend_after: float = float("inf")) -> None:
        self._answer_within = answer_within
        self._resend_after = resend_after
        self._waiting: dict[int, _Waiting] = {}
        self._ids = itertools.count(1)

    async def forward(
        self,
        leader: str,
        command: bytes,
        send: Callable[[str, object], None],
        resendable: bool = False,
    ) -> ApplyResult:
        """Have ``leader`` commit ``command``; its apply result, or the error its
        answer names (``NoQuorumError``, ``DiskFullError``, ``LocalError``).
        ``Retarget``: send it again (leader changed, or no answer in ``resend_after``
        for a ``resendable`` command)."""
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ForwardResult] = loop.create_future()
        now = loop.time()
        resend_at = now + self._resend_after if resendable else float("inf")
        self._waiting[req_id] = _Waiting(fut, now + self._answer_within, leader, resend_at)
        send(leader, ForwardPropose(req_id, command))
        try:
            res = await fut  # ``expire`` fails it after the deadline
        finally:
            self._waiting.pop(req_id, None)
        if res.error_code == "no_quorum":
            raise LeaderRefused(res.message)
        if res.error_code == "disk_full":
            raise DiskFullError(res.message)
        if res.error_code:
            raise LocalError(f"leader refused the write: {res.message}")
        ok, value, error = unpack_result(res.value)
        return ApplyResult(ok, value, error)

    def answer(self, msg: ForwardResult) -> None:
        """The leader's answer to one of our requests (unknown or late ones are dropped)."""
        waiting = self._waiting.get(msg.request_id)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_result(msg)

    def retarget(self, leader: str) -> None:
        """A new leader is known: the requests sent to another node fail with
        ``Retarget`` (their senders resend them).  Rare: a scan is fine."""
        for waiting in self._waiting.values():
            if waiting.leader != leader and not waiting.future.done():
                waiting.future.set_exception(Retarget())

    def expire(self, now: float) -> None:
        """Fail the requests whose deadline passed, and hand the resendable ones
        unanswered for ``resend_after`` back to their senders (``Retarget``).  The
        dict is in insertion order and every deadline and resend time is insertion
        time plus one constant, so the sweep stops at the first request that is
        due for neither (a non-resendable one is skipped, not a stop)."""
        due: list[tuple[int, _Waiting]] = []
        for req_id, waiting in self._waiting.items():
            if waiting.future.done():
                continue
            if waiting.deadline <= now or waiting.resend_at <= now:
                due.append((req_id, waiting))
            elif waiting.resend_at != float("inf"):
                break
        for req_id, waiting in due:
            del self._waiting[req_id]
            if waiting.deadline <= now:
                waiting.future.set_exception(NoQuorumError("the leader did not answer in time"))
            else:
                waiting.future.set_exception(Retarget())

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(error())


def result_answer(request_id: int, result: ApplyResult) -> ForwardResult:
    """The leader's answer carrying ``result``."""
    return ForwardResult(request_id, "", "", pack_result(result.ok, result.value, result.error))


def pack_result(ok: bool, value: Any, error: str | None) -> bytes:
    return bytes(msgpack.packb([ok, value, error], use_bin_type=True))


def unpack_result(data: bytes) -> tuple[bool, Any, str | None]:
    try:
        ok, value, error = msgpack.unpackb(
            data, raw=False, max_bin_len=wire.MAX_BIN_LEN, max_str_len=wire.MAX_STR_LEN
        )
    except (ValueError, TypeError, msgpack.ExtraData) as exc:
        raise LocalError(f"malformed forwarded result: {exc}") from None
    return bool(ok), value, error
