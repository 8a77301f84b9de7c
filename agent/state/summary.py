"""One-line summaries of commands for the TUI's consensus log, one formatter per op."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from agent.state.commands import (
    Batch,
    Command,
    KvCas,
    KvDelete,
    KvExpire,
    KvPut,
    KvPutTtl,
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
    TaskSubmit,
)

MAX_SUMMARY = 120


def summarize(cmd: Command, name_of: Callable[[str], str]) -> str:
    """E.g. ``kv.put app/db.url (12 B)`` or ``task.assign t3 → web2 (epoch 1)``."""
    text = _FORMATS[type(cmd.body)](cmd.body, name_of)
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


def _placed(b: TaskPlace, name_of: Callable[[str], str]) -> str:
    if len(b.tasks) == 1:
        return f"task.place {b.tasks[0]} → {name_of(b.nodes[b.hosts[0]])} (epoch {b.epochs[0]})"
    hosts = ", ".join(name_of(n) for n in b.nodes)
    return f"task.place {len(b.tasks)} tasks ({b.tasks[0]}…{b.tasks[-1]}) on {hosts}"


def _submitted(b: TaskSubmit) -> str:
    shown = " ".join(b.argv) if b.argv is not None else b.shell or ""
    return f"task.submit {shown}"


_Format = Callable[[Any, Callable[[str], str]], str]
_FORMATS: Final[dict[type[Any], _Format]] = {
    # op class -> (body, name_of) -> one line
    KvPut: lambda b, name: f"kv.put {b.ns}/{b.key} ({len(b.value)} B)",
    KvDelete: lambda b, name: f"kv.delete {b.ns}/{b.key}",
    KvCas: lambda b, name: f"kv.cas {b.ns}/{b.key} ({len(b.value)} B)",
    KvPutTtl: lambda b, name: f"kv.put {b.ns}/{b.key} ({len(b.value)} B, ttl {b.ttl_ms / 1000:g} s)",
    KvExpire: lambda b, name: f"kv.expire {b.ns}/{','.join(b.keys)}",
    ProposalCreate: lambda b, name: f"proposal.create {b.title!r} (threshold {b.threshold:g})",
    ProposalVote: lambda b, name: (
        f"proposal.vote #{b.id} {'yes' if b.approve else 'no'} by {name(b.voter)}"
    ),
    NodeRegister: lambda b, name: f"node.register {b.name or b.node}",
    NodeDrain: lambda b, name: f"{b.OP} {name(b.node)}",
    NodeUndrain: lambda b, name: f"{b.OP} {name(b.node)}",
    TaskSubmit: lambda b, name: _submitted(b),
    TaskAssign: lambda b, name: f"task.assign {b.task} → {name(b.node)} (epoch {b.epoch})",
    TaskPlace: _placed,
    Batch: lambda b, name: f"batch of {len(b.cmds)} commands",
    TaskStart: lambda b, name: f"task.start {b.task} on {name(b.node)} (epoch {b.epoch})",
    TaskFinish: lambda b, name: f"task.finish {b.task} exit {b.exit_code} on {name(b.node)}",
    TaskMigrate: lambda b, name: f"task.migrate {b.task} → {name(b.to)} ({b.reason})",
    TaskCancel: lambda b, name: f"task.cancel {b.task}",
    TaskLost: lambda b, name: f"task.lost {b.task}",
    TaskFailNode: lambda b, name: f"task.fail_node {name(b.node)} ({len(b.targets)} targets)",
}
"""One formatter per op (a table, not a 16-way match); every op has one."""
