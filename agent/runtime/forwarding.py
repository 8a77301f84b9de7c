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
old leader then finds nobody waiting and is dropped).  A ``no_quorum`` answer
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


class Forwarder:
    """Forwarded writes waiting for the leader's answer, by request id."""

    def __init__(self, answer_within: float) -> None:
        self._answer_within = answer_within
        self._waiting: dict[int, _Waiting] = {}
        self._ids = itertools.count(1)

    async def forward(
        self, leader: str, command: bytes, send: Callable[[str, object], None]
    ) -> ApplyResult:
        """Have ``leader`` commit ``command``; its apply result, or the error its
        answer names (``NoQuorumError``, ``DiskFullError``, ``LocalError``)."""
        req_id = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ForwardResult] = loop.create_future()
        self._waiting[req_id] = _Waiting(fut, loop.time() + self._answer_within, leader)
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
        """Fail the requests whose deadline passed.  The dict is in insertion order
        and every deadline is insertion time plus one constant, so the sweep stops
        at the first live one."""
        while self._waiting:
            req_id, waiting = next(iter(self._waiting.items()))
            if waiting.deadline > now and not waiting.future.done():
                break
            del self._waiting[req_id]
            if not waiting.future.done():
                waiting.future.set_exception(NoQuorumError("the leader did not answer in time"))

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
