"""The agent's event-loop choice (agent/runtime/event_loop.py, issue 14)."""

from __future__ import annotations

import asyncio

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.runtime import event_loop
from agent.runtime.event_loop import ENV_VAR, resolve_event_loop

HAVE_UVLOOP = event_loop.uvloop_available()


def test_explicit_asyncio_wins_over_the_environment() -> None:
    assert resolve_event_loop("asyncio", {ENV_VAR: "uvloop"}) == "asyncio"


def test_auto_follows_the_environment_pin() -> None:
    assert resolve_event_loop("auto", {ENV_VAR: "asyncio"}) == "asyncio"


def test_auto_without_a_pin_takes_uvloop_when_installed() -> None:
    assert resolve_event_loop("auto", {}) == ("uvloop" if HAVE_UVLOOP else "asyncio")


def test_a_bad_pin_is_one_config_line() -> None:
    with pytest.raises(ConfigError, match="MESH_EVENT_LOOP"):
        resolve_event_loop("auto", {ENV_VAR: "trio"})


def test_an_unknown_loop_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(None, {"event_loop": "trio", "insecure_no_key": True}, "local")


def test_the_default_is_auto() -> None:
    cfg = load_config(None, {"insecure_no_key": True}, "local")
    assert cfg.event_loop == "auto"


def test_uvloop_asked_for_but_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_loop, "uvloop_available", lambda: False)
    with pytest.raises(ConfigError, match="meshtui\\[fast\\]"):
        resolve_event_loop("uvloop", {})
    assert resolve_event_loop("auto", {}) == "asyncio"


def test_the_standard_loop_runs_a_coroutine() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(which(), "asyncio").startswith("asyncio")
    assert event_loop.describe("asyncio") == "asyncio"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed (pip install 'meshtui[fast]')")
def test_uvloop_runs_a_coroutine() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(which(), "uvloop").startswith("uvloop")
    assert event_loop.describe("uvloop").startswith("uvloop ")
