"""Event-stream kind filters: ``subscribe(["tasks:finished"])`` gets only those events.

The agent drops the other kinds before queueing or encoding them (issue 14: the
bench's subscriber read 1,000 of about 4,200 ``tasks`` events per 1,000 tasks).
A real control server on a Unix socket; the agent's declared topics.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.server import ControlServer
from agent.control.session import parse_topics
from agent.errors import ProtocolError
from agent.runtime.agent import TASK_EVENT_KINDS, TOPICS
from meshtui.client import ClientError, ControlClient

pytestmark = pytest.mark.timeout(60)

DECLARED = frozenset(TOPICS)


def test_plain_topics_are_unchanged() -> None:
    assert parse_topics(["tasks", "members"], DECLARED) == (frozenset({"tasks", "members"}), {})


def test_kinds_filter_and_a_plain_topic_wins() -> None:
    plain, kinds = parse_topics(["tasks:finished", "tasks:lost", "members"], DECLARED)
    assert plain == {"tasks", "members"}
    assert kinds == {"tasks": frozenset({"finished", "lost"})}
    assert parse_topics(["tasks:finished", "tasks"], DECLARED) == (frozenset({"tasks"}), {})


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["tasks:done"], "unknown kind 'done' of topic 'tasks' (kinds: assigned, cancelled, "
                         "finished, lost, requeued, started, submitted)"),
        (["members:join"], "topic 'members' takes no kind filter (subscribe to 'members')"),
        (["weather:rain"], "unknown topic 'weather:rain'"),
        (["weather"], "unknown topic 'weather'"),
    ],
)
def test_unknown_names_are_refused_in_one_line(names: list[str], message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_topics(names, DECLARED)
    assert str(caught.value) == message


def test_every_kind_the_state_machine_emits_is_declared() -> None:
    source = (Path(__file__).parents[2] / "agent/state/tasks.py").read_text()
    emitted = set(re.findall(r'_event\(\s*"(\w+)"', source))
    emitted |= set(re.findall(r'"assigned" if to is not None else "(\w+)"', source))
    assert emitted and emitted <= set(TASK_EVENT_KINDS), emitted - set(TASK_EVENT_KINDS)


@pytest.fixture
async def server() -> AsyncIterator[ControlServer]:
    directory = tempfile.mkdtemp(prefix="mt-kf-", dir="/tmp")
    srv = ControlServer(f"{directory}/s.sock", {}, TOPICS)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()
        shutil.rmtree(directory, ignore_errors=True)


def _task(kind: str, task_id: str) -> dict[str, Any]:
    return {"kind": kind, "task": {"id": task_id}}


async def _next(stream: Any) -> dict[str, Any]:
    item: dict[str, Any] = await asyncio.wait_for(stream.__anext__(), 10)
    return item


async def test_a_filtered_subscription_gets_only_its_kinds(server: ControlServer) -> None:
    client = await ControlClient.connect_unix(server.path)
    try:
        only = await client.subscribe(["tasks:finished", "tasks:lost"])
        every = await client.subscribe(["tasks"])
        assert server.has_subscribers("tasks")
        sent = [("submitted", "a"), ("assigned", "a"), ("started", "a"), ("finished", "a"),
                ("submitted", "b"), ("lost", "b")]
        for kind, task_id in sent:
            server.publish("tasks", _task(kind, task_id))
        server.publish("members", {"kind": "join", "member": {}})
        got = [(await _next(only))["data"] for _ in range(2)]
        assert got == [_task("finished", "a"), _task("lost", "b")]
        assert [(await _next(every))["data"]["kind"] for _ in sent] == [k for k, _ in sent]
        # Nothing else was queued for the filtered one: the next event it sees is new.
        server.publish("tasks", _task("finished", "c"))
        assert (await _next(only))["data"] == _task("finished", "c")
        with pytest.raises(ClientError) as caught:
            await client.subscribe(["tasks:done"])
        assert caught.value.code == "bad_request"
        assert "unknown kind 'done' of topic 'tasks'" in str(caught.value)
        assert "\n" not in str(caught.value)
    finally:
        await client.close()
