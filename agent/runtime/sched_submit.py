"""Task writes from the control API coalesced into ``batch`` entries.

Theory of operation: a client with many submits in flight (``meshtui submit`` in
a loop, a workflow engine, the placement benchmark's 64) sends them down one
socket; the control server reads several requests per wake-up and runs their
handlers one after another.  Each ``task.*`` write handler hands its encoded
command to ``CommitBatcher.commit``, which queues it and schedules one flush for
the end of that pass of the event loop (``call_soon``): every write queued by
then goes to Raft as one ``batch`` entry (``agent/state/commands.py``), in
arrival order, at most ``MAX_COALESCED`` per entry.  A lone write is proposed
as itself.  No timer is involved: nothing waits for company, so a single write
is as quick as before, and a burst costs one Raft append, one share of an
fsync, one replication message and one apply pass instead of one each.

On the Raft leader ``task.submit`` skips this batcher: it hands the driver its
bytes and decoded command (``TaskRuntime.handlers``), which join the driver's own
group commit of the pass (``consensus_requests``, the same ``batch`` entries), so
the leader applies the command it built instead of decoding its own entry.  A
follower's submits come here, and go to the leader as one forward per pass.

The state machine applies each command of a batch exactly as its own entry --
its rid (a retried submit is still applied once), its result, its events --
and each caller gets its own command's result, refusals raised as
``handlers.common.committer`` raises them (``check``).  If the batch itself fails (no
quorum, leader change), every caller gets that error and retries on its own,
rid and all (a batch carries no rid of its own, so it is never resent whole).

``task.submit_many`` (``submit_many``) carries many tasks in one control
request: each is checked and committed exactly as its own ``task.submit``
(its params, its rid, its own command inside the batch entry), and the request
is answered once every one of them is committed.  It spares a client that
submits thousands of tasks the per-request costs -- a frame each way, a
handler run, a reply -- on both ends of the socket; the log sees the same
batch entries as for the same tasks sent one request each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from agent.control.params import Schema, check_params
from agent.control.server import error_reply
from agent.state.builders import cmd_batch
from agent.state.machine import ApplyResult

MAX_COALESCED: Final = 256
"""Commands one ``batch`` entry carries at most (default 256): bounds an entry's size
(a submit is a few hundred bytes) and one apply pass; a client's in-flight window is
usually well below it."""


MAX_SUBMIT_MANY: Final = 1024
"""Tasks one ``task.submit_many`` request may carry (default 1024): bounds the request
(a task's params are about 100 bytes) and what one request puts into the log at once
(4 batch entries of ``MAX_COALESCED``); a client with more sends several requests."""

REFUSALS: Final = frozenset({"bad_request", "not_found"})
"""Error codes that refuse one task of a ``task.submit_many`` (its params, a limit this
host cannot enforce, the state machine's word) and leave the others; any other error
(no quorum, leader change, full disk) fails the whole request."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def submit_many(submit: Handler, schema: Schema) -> Handler:
    """The ``task.submit_many`` handler over ``task.submit``'s (``submit``, whose params
    are checked against ``schema`` here, item by item).

    ``{tasks: [params of task.submit, ...]}`` -> one row per task, in order: what
    ``task.submit`` answers (``{id}``), or ``{error, message}`` for a task refused
    on its own (``REFUSALS``).  Every task's handler runs in the same pass of the
    loop, so ``CommitBatcher`` puts their commands into batch entries together.
    Any other failure fails the request: retried whole with the same rids, a task
    already committed is not submitted twice (the apply's rid dedup)."""

    async def handler(params: dict[str, Any]) -> list[Any]:
        tasks = params.get("tasks") or []
        if len(tasks) > MAX_SUBMIT_MANY:
            raise ValueError(f"at most {MAX_SUBMIT_MANY} tasks per request, got {len(tasks)}")
        for i, item in enumerate(tasks):
            if type(item) is not dict:
                raise ValueError(f"tasks[{i}] must be a map of task.submit params")
            check_params(f"task.submit_many: tasks[{i}]", item, schema)
        results = await asyncio.gather(*(_started(submit, item) for item in tasks), return_exceptions=True)
        rows: list[Any] = []
        for result in results:
            if isinstance(result, BaseException):
                code, message = error_reply(result)
                if code not in REFUSALS:
                    raise result
                result = {"error": code, "message": message}
            rows.append(result)
        return rows

    return handler


async def _started(submit: Handler, item: dict[str, Any]) -> Any:
    """``submit(item)`` awaited, and what it raises before returning its awaitable (a
    plain handler checks its params at the call) raised here: ``gather`` sees it as
    that task's refusal, not the request's."""
    return await submit(item)


class CommitBatcher:
    """``commit(command)`` as ``handlers.common.committer`` has it, coalescing the
    commands queued in one pass of the event loop into ``batch`` entries."""

    def __init__(
        self,
        propose: Callable[[bytes], Awaitable[ApplyResult]],
        check: Callable[[ApplyResult], None] = lambda result: None,
    ) -> None:
        """``propose`` commits one command (``Proposer.propose``); ``check`` raises what
        a refused result means (the handlers pass ``common.check_applied``)."""
        self._propose = propose
        self._check = check
        self._queued: list[tuple[bytes, asyncio.Future[ApplyResult]]] = []
        self._flush_due = False
        self._running: set[asyncio.Task[None]] = set()

    async def commit(self, command: bytes) -> ApplyResult:
        """Commit ``command``; its own apply result, after ``check``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ApplyResult] = loop.create_future()
        self._queued.append((command, fut))
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        result = await fut
        self._check(result)
        return result

    def _flush(self) -> None:
        self._flush_due = False
        queued, self._queued = self._queued, []
        for start in range(0, len(queued), MAX_COALESCED):
            task = asyncio.create_task(self._commit(queued[start : start + MAX_COALESCED]))
            self._running.add(task)  # kept until done
            task.add_done_callback(self._running.discard)

    async def _commit(self, chunk: list[tuple[bytes, asyncio.Future[ApplyResult]]]) -> None:
        try:
            if len(chunk) == 1:
                results = [await self._propose(chunk[0][0])]
            else:
                batch = await self._propose(cmd_batch([c for c, _ in chunk], "", time.time()))
                results = split(batch, len(chunk))
        except Exception as exc:  # the batch as a whole failed: every caller hears why
            for _, fut in chunk:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(chunk, results, strict=True):
            if not fut.done():  # a caller that gave up (cancelled) is skipped
                fut.set_result(result)


def split(batch: ApplyResult, count: int) -> list[ApplyResult]:
    """Each command's result from a batch's (``[[ok, value, error], ...]``); a refused
    batch refuses every command with its error."""
    if not batch.ok or not isinstance(batch.value, list) or len(batch.value) != count:
        return [ApplyResult(False, None, batch.error or "batch refused")] * count
    return [ApplyResult(bool(ok), value, error) for ok, value, error in batch.value]
