"""Typed constructors for every command: ``cmd_*(..., rid, at) -> bytes`` to propose.

Each returns the encoded command, already validated (``ProtocolError`` if not).
``rid`` is the client's idempotency id (``""`` for leader-generated commands
that need none); ``at`` is the proposing leader's wall-clock time in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.state.commands import (
    Batch,
    Command,
    KvCas,
    KvDelete,
    KvPut,
    NodeDrain,
    NodeRegister,
    NodeUndrain,
    ProposalCreate,
    ProposalVote,
    TaskAssign,
    TaskCancel,
    TaskFailNode,
    TaskFinish,
    TaskLost,
    TaskMigrate,
    TaskPlace,
    TaskStart,
    TaskStats,
    TaskSubmit,
    encode_command,
    submit_decodes_to_itself,
)


def cmd_kv_put(ns: str, key: str, value: bytes, rid: str, at: float) -> bytes:
    return encode_command(KvPut(ns, key, value), rid, at)


def cmd_kv_delete(ns: str, key: str, rid: str, at: float) -> bytes:
    return encode_command(KvDelete(ns, key), rid, at)


def cmd_kv_cas(
    ns: str, key: str, expected: bytes | None, value: bytes, rid: str, at: float
) -> bytes:
    return encode_command(KvCas(ns, key, expected, value), rid, at)


def cmd_proposal_create(
    title: str,
    body: str,
    proposer: str,
    rid: str,
    at: float,
    threshold: float = 0.67,
    kind: str = "text",
    eligible: int = 0,
) -> bytes:
    return encode_command(ProposalCreate(title, body, proposer, threshold, kind, eligible), rid, at)


def cmd_proposal_vote(
    proposal_id: int, voter: str, approve: bool, rid: str, at: float, eligible: int = 0
) -> bytes:
    return encode_command(ProposalVote(proposal_id, voter, approve, eligible), rid, at)


def cmd_node_register(node: str, name: str, rid: str, at: float) -> bytes:
    return encode_command(NodeRegister(node, name), rid, at)


def cmd_node_drain(node: str, rid: str, at: float) -> bytes:
    return encode_command(NodeDrain(node), rid, at)


def cmd_node_undrain(node: str, rid: str, at: float) -> bytes:
    return encode_command(NodeUndrain(node), rid, at)


def cmd_task_submit(spec: TaskSubmit, rid: str, at: float) -> bytes:
    return encode_command(spec, rid, at)


def task_submit_decoded(spec: TaskSubmit, rid: str, at: float) -> tuple[bytes, Command | None]:
    """``cmd_task_submit``'s bytes and, when ``spec`` is exactly what they decode to
    (``submit_decodes_to_itself``), the ``Command`` they decode to: the leader that
    proposes them applies it instead of decoding its own entry (None: it decodes)."""
    data = encode_command(spec, rid, at)
    exact = type(at) is float and submit_decodes_to_itself(spec)
    return data, Command(spec, rid, at) if exact else None


def task_spec(
    argv: Sequence[str] | None = None,
    shell: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    caps: Sequence[str] = (),
    key: str | None = None,
    strategy: str | None = None,
    priority: int = 0,
    retries: int = 2,
    timeout: float | None = None,
    restartable: bool = False,
    submitter: str = "",
) -> TaskSubmit:
    """A ``TaskSubmit``; the strategy defaults to ``hash`` when a key is given, else auction."""
    return TaskSubmit(
        argv=tuple(argv) if argv is not None else None,
        shell=shell,
        env=dict(env or {}),
        cwd=cwd,
        caps=tuple(caps),
        key=key,
        strategy=strategy or ("hash" if key is not None else "auction"),
        priority=priority,
        retries=retries,
        timeout=timeout,
        restartable=restartable,
        submitter=submitter,
    )


def cmd_task_assign(task: str, node: str, epoch: int, reason: str, rid: str, at: float) -> bytes:
    return encode_command(TaskAssign(task, node, epoch, reason), rid, at)


def cmd_batch(commands: Sequence[bytes], rid: str, at: float) -> bytes:
    """One ``batch`` entry carrying already encoded ``commands``, applied one by one."""
    return encode_command(Batch(tuple(commands)), rid, at)


def cmd_task_place(placements: Sequence[tuple[str, str, int]], rid: str, at: float) -> bytes:
    """One ``task.place`` entry for ``(task, node, epoch)`` placements (node ids written once)."""
    hosts: dict[str, int] = {}
    for _, node, _ in placements:
        hosts.setdefault(node, len(hosts))
    body = TaskPlace(
        tuple(hosts),
        tuple(task for task, _, _ in placements),
        tuple(hosts[node] for _, node, _ in placements),
        tuple(epoch for _, _, epoch in placements),
    )
    return encode_command(body, rid, at)


def cmd_task_start(task: str, node: str, epoch: int, rid: str, at: float) -> bytes:
    return encode_command(TaskStart(task, node, epoch), rid, at)


def cmd_task_finish(
    task: str,
    node: str,
    epoch: int,
    exit_code: int,
    stats: TaskStats,
    rid: str,
    at: float,
    replicas: Sequence[str] = (),
) -> bytes:
    return encode_command(TaskFinish(task, node, epoch, exit_code, stats, tuple(replicas)), rid, at)


def cmd_task_cancel(task: str, rid: str, at: float) -> bytes:
    return encode_command(TaskCancel(task), rid, at)


def cmd_task_migrate(
    task: str, to: str, reason: str, rid: str, at: float, epoch: int | None = None
) -> bytes:
    return encode_command(TaskMigrate(task, to, reason, epoch), rid, at)


def cmd_task_lost(task: str, rid: str, at: float, reason: str = "") -> bytes:
    return encode_command(TaskLost(task, reason), rid, at)


def cmd_task_fail_node(node: str, targets: Mapping[str, str], rid: str, at: float) -> bytes:
    return encode_command(TaskFailNode(node, dict(targets)), rid, at)
