"""Issue 20: waiting for a leader (agent/runtime/leader_wait.py), the request timeout's
path from the CLI flag / environment to the driver, and who is a real minority."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from agent.errors import NoQuorumError
from agent.raft.core import RaftNode
from agent.runtime.handlers import strict
from agent.runtime.leader_wait import REQUEST_TIMEOUT, LeaderWait, request_timeout_param
from meshtui.commands import DEFAULT_REQUEST_TIMEOUT, request_timeout


@dataclass
class _Conf:
    voters: tuple[str, ...] = ()


@dataclass
class _Core:
    """The few RaftNode answers LeaderWait reads."""

    conf: _Conf = field(default_factory=_Conf)
    leader_id: str = ""
    leader: bool = False
    contact: bool = False

    def has_quorum_contact(self) -> bool:
        return self.contact

    def is_leader(self) -> bool:
        return self.leader


def _wait(core: _Core, node_id: str = "a") -> LeaderWait:
    return LeaderWait(node_id, lambda: cast(RaftNode, core), 0.05, 10, 0.2)


def test_not_a_minority_while_forming_or_before_it_could_hear_anyone() -> None:
    core = _Core()
    lw = _wait(core)
    lw.ticks = 100
    assert not lw.minority()  # no voters known: forming, wait
    core.conf.voters = ("a", "b", "c")
    lw.ticks = 19  # under two election timeouts since start
    assert not lw.minority()


def test_minority_counts_voters_heard_within_two_election_timeouts() -> None:
    core = _Core(_Conf(("a", "b", "c")))
    lw = _wait(core)
    lw.ticks = 100
    assert lw.minority()  # heard nobody: alone
    lw.heard["b"] = 80  # a (pre-)vote request 20 ticks ago: still in the window
    assert not lw.minority()
    lw.heard["b"] = 79
    assert lw.minority()
    core.contact = True  # a live leader: never a minority
    assert not lw.minority()


def test_voters_the_link_layer_reaches_count_towards_the_majority() -> None:
    """A follower of 5 hears only its leader over Raft: with that one link cut it
    still reaches two others (directly or relayed), so it is no minority; cut off
    from all but one, it is."""
    core = _Core(_Conf(("a", "b", "c", "d", "e")))
    lw = _wait(core)
    lw.ticks = 100
    reach: set[str] = {"c", "d"}
    lw.reachable = lambda v: v in reach
    assert not lw.minority()  # a + c + d: 3 of 5
    reach = {"c"}
    assert lw.minority()  # a + c: 2 of 5
    reach = set()
    lw.heard["b"] = 95
    lw.heard["c"] = 95
    assert not lw.minority()  # Raft traffic still counts as before


def test_link_state_reachability_is_a_recent_answer_or_a_relay_in_use() -> None:
    from agent.links.config import LinkConfig
    from agent.links.state import LinkTable

    table = LinkTable(LinkConfig.lan(), "a")
    table.set_members({"a", "b", "c"}, 0.0)
    assert not table.reachable("b", 0.0)  # never probed: unknown, not counted
    table.observe_direct("b", 0.1, 0.001)
    assert table.reachable("b", 0.1)
    table.observe_failure("b", 0.2)
    assert not table.reachable("b", 0.2)  # the last probe went unanswered
    table.observe_direct("c", 0.3, 0.001)
    table.observe_failure("b", 0.3)  # broken now: relayed through c, which we reach
    assert table.reachable("b", 0.3)
    for at in (0.4, 0.5):  # cut from c too (a real minority): no relay, nobody reached
        table.observe_failure("c", at)
    assert not table.reachable("b", 0.5) and not table.reachable("c", 0.5)
    assert not table.reachable("zz", 0.5)


async def test_wait_is_woken_by_a_leader_change() -> None:
    core = _Core(_Conf(("a", "b", "c")))
    lw = _wait(core)
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(lw.wait(loop.time() + 5.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    core.leader_id, core.contact = "b", True
    lw.changed()
    assert await asyncio.wait_for(waiting, 1.0) == "b"
    core.leader = True
    assert await lw.wait(loop.time() + 1.0) == "a"  # we lead: our own id


async def test_wait_skips_the_refusing_node_and_ends_at_the_deadline() -> None:
    core = _Core(_Conf(("a", "b", "c")), leader_id="b", contact=True)
    lw = _wait(core)
    lw.heard.update(b=0, c=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoQuorumError, match="no leader within the request timeout"):
        await lw.wait(started + 0.12, refused="b")
    assert 0.1 <= loop.time() - started < 1.0


async def test_wait_fails_fast_in_a_real_minority() -> None:
    core = _Core(_Conf(("a", "b", "c")))
    lw = _wait(core)
    lw.ticks = 100
    with pytest.raises(NoQuorumError, match="majority"):
        await lw.wait(asyncio.get_running_loop().time() + 5.0)


async def test_request_timeout_sets_the_deadline() -> None:
    lw = _wait(_Core())
    now = asyncio.get_running_loop().time()
    assert lw.deadline() - now == pytest.approx(0.2, abs=0.05)  # the agent's default
    token = REQUEST_TIMEOUT.set(3.0)
    try:
        assert lw.deadline() - now == pytest.approx(3.0, abs=0.05)
    finally:
        REQUEST_TIMEOUT.reset(token)


def test_request_timeout_param_is_checked() -> None:
    assert request_timeout_param(None) is None
    assert request_timeout_param(2) == 2.0
    for bad in (0, -1, 301, True, "5"):
        with pytest.raises(ValueError, match="request_timeout"):
            request_timeout_param(bad)


async def test_strict_hands_the_request_timeout_to_both_handler_kinds() -> None:
    async def coroutine_handler(params: dict[str, Any]) -> Any:
        return REQUEST_TIMEOUT.get()

    def future_handler(params: dict[str, Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(REQUEST_TIMEOUT.get())
        return fut

    assert await strict("status", coroutine_handler)({"request_timeout": 1.5}) == 1.5
    assert await strict("status", future_handler)({"request_timeout": 2.5}) == 2.5
    assert await strict("status", coroutine_handler)({}) is None
    assert REQUEST_TIMEOUT.get() is None  # nothing leaks into the caller's context


def test_cli_request_timeout_flag_environment_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHTUI_REQUEST_TIMEOUT", raising=False)
    assert request_timeout(argparse.Namespace()) == DEFAULT_REQUEST_TIMEOUT == 5.0
    monkeypatch.setenv("MESHTUI_REQUEST_TIMEOUT", "2.5")
    assert request_timeout(argparse.Namespace()) == 2.5
    assert request_timeout(argparse.Namespace(request_timeout=9.0)) == 9.0  # the flag wins
    monkeypatch.setenv("MESHTUI_REQUEST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MESHTUI_REQUEST_TIMEOUT='soon'"):
        request_timeout(argparse.Namespace())
    with pytest.raises(ValueError, match="--request-timeout 0"):
        request_timeout(argparse.Namespace(request_timeout=0.0))
