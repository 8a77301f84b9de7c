"""Mixed-version clusters (agent/runtime/compat.py): while a member runs a release
older than 0.2.0, ``batch`` and ``task.place`` are written as the commands that
release applies, with the same effect on the state and the same result shape."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

from test_state_tasks import Cluster

from agent import __version__
from agent.runtime.compat import (
    BATCH_RELEASE,
    CompatProposer,
    batches_applied,
    cluster_applies,
    release_of,
)
from agent.state.builders import cmd_batch, cmd_kv_put, cmd_task_place, cmd_task_submit, task_spec
from agent.state.commands import decode_command
from agent.state.machine import ApplyResult


def gate(*versions: str | None) -> Callable[[], bool]:
    """The gate as the agent builds it, over members gossiping ``versions``."""
    members = [SimpleNamespace(meta=SimpleNamespace(version=v)) for v in versions]
    return batches_applied(lambda: members)  # type: ignore[arg-type,return-value]


class Log:
    """A propose that applies at once to a Cluster's state machine and records the ops."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ops: list[str] = []

    async def __call__(self, command: bytes) -> ApplyResult:
        self.ops.append(decode_command(command).op)
        return self.cluster(command)


def test_releases_compare_and_unknown_ones_count_as_old() -> None:
    assert release_of("0.2.0") == (0, 2, 0) and release_of("1.10.3+dev") == (1, 10, 3)
    assert release_of("") is None and release_of("dev") is None
    assert cluster_applies(["0.2.0", "0.3.1", "1.0.0"], BATCH_RELEASE)
    assert not cluster_applies(["0.2.0", "0.1.0"], BATCH_RELEASE)
    assert not cluster_applies(["0.2.0", None], BATCH_RELEASE)
    assert not cluster_applies(["0.2.0", "garbage"], BATCH_RELEASE)
    assert release_of(__version__) is not None and release_of(__version__) >= BATCH_RELEASE  # type: ignore[operator]


def _two_clusters() -> tuple[Cluster, Cluster, list[str]]:
    new, old = Cluster(), Cluster()
    ids = []
    for _ in range(4):
        ids.append(new.submit())
        assert old.submit() == ids[-1]
    return new, old, ids


def test_a_place_for_an_older_cluster_is_one_assign_each_with_the_same_effect() -> None:
    new, old, (t1, t2, t3, _t4) = _two_clusters()
    items = [(t1, "id1", 1), (t2, "id2", 1), (t3, "id2", 5), ("t99", "id1", 1)]
    upgraded = Log(new)
    mixed = Log(old)
    place = cmd_task_place(items, "", 2.0)
    direct = asyncio.run(CompatProposer(upgraded, gate("0.2.0", "0.2.0"))(place))
    written = CompatProposer(mixed, gate("0.2.0", "0.1.0"))
    downgraded = asyncio.run(written(place))
    assert upgraded.ops == ["task.place"] and mixed.ops == ["task.assign"] * 4
    assert written.downgraded == 1
    assert direct.value == downgraded.value
    assert direct.value["placed"] == 2 and [t for t, _ in direct.value["refused"]] == [t3, "t99"]
    assert new.sm.task_rows() == old.sm.task_rows()


def test_a_batch_for_an_older_cluster_is_its_commands_in_order() -> None:
    new, old = Cluster(), Cluster()
    cmds = [cmd_task_submit(task_spec(["true"]), f"r{i}", 1.0) for i in range(3)]
    cmds.append(cmds[0])  # a retried submit (same rid) is applied once either way
    batch = cmd_batch(cmds, "", 1.0)
    upgraded, mixed = Log(new), Log(old)
    direct = asyncio.run(CompatProposer(upgraded, gate("0.2.0"))(batch))
    downgraded = asyncio.run(CompatProposer(mixed, gate("0.2.0", "0.1.9"))(batch))
    assert upgraded.ops == ["batch"] and mixed.ops == ["task.submit"] * 4
    assert direct.ok and downgraded.ok and direct.value == downgraded.value
    assert new.sm.task_rows() == old.sm.task_rows() and len(new.sm.task_rows()) == 3


def test_other_commands_pass_through_whatever_the_cluster_runs() -> None:
    c = Cluster()
    log = Log(c)
    result = asyncio.run(CompatProposer(log, gate("0.1.0"))(cmd_kv_put("default", "k", b"v", "", 1.0)))
    assert result.ok and log.ops == ["kv.put"]
