"""What every area's control handlers share: parameter readers, commits, reads.

Writes become state-machine commands committed through Raft (forwarded to the
leader from followers); reads are linearizable unless ``stale`` is set.
Parameter errors raise ``ValueError`` (→ ``bad_request``); a command the state
machine refuses for an unknown id raises ``TaskError`` (→ ``not_found``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from agent.errors import TaskError
from agent.runtime.ports import Proposer
from agent.state.machine import ApplyResult

Commit = Callable[[bytes], Awaitable[ApplyResult]]
"""Commit an encoded command; its result, refusals raised (``check_applied``)."""
Read = Callable[[dict[str, Any]], Awaitable[None]]
"""The read barrier a read-only method runs first, unless its params say ``stale``."""


def param_str(params: dict[str, Any], name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"parameter {name!r} must be a string")
    return value


def param_bytes(params: dict[str, Any], name: str) -> bytes:
    """A bytes param; a str value is taken as its UTF-8 bytes."""
    value = params.get(name)
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise ValueError(f"parameter {name!r} must be bytes")
    return value


def request_id(params: dict[str, Any]) -> str:
    """The caller's ``rid`` (retries of one write share it), or a fresh one."""
    rid = params.get("rid") or uuid.uuid4().hex
    if not isinstance(rid, str) or len(rid) > 128:
        raise ValueError("parameter 'rid' must be a string of at most 128 characters")
    return rid


def check_applied(result: ApplyResult) -> None:
    """Raise what a refused command means: ``TaskError`` for an unknown id, else ``ValueError``."""
    if not result.ok:
        message = result.error or "rejected"
        if "unknown" in message or "not found" in message:
            raise TaskError(message)
        raise ValueError(message)


def applied_value(result: ApplyResult) -> Any:
    check_applied(result)
    return result.value


def committer(raft: Proposer) -> Commit:
    async def commit(command: bytes) -> ApplyResult:
        result = await raft.propose(command)
        check_applied(result)
        return result

    return commit


def reader(raft: Proposer) -> Read:
    async def read(params: dict[str, Any]) -> None:
        if not params.get("stale", False):
            await raft.read_barrier()

    return read
