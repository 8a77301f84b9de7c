"""A ``Pending``'s first callback runs inline in ``set_result``/``set_exception``
(issue 14, session 8: one Python call less a write on the leader and a reply on the
client), with what ``_call`` gave it: ``callback(arg, pending)``, an exception it
raises logged and swallowed, the other callbacks still run, in order."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agent.control import pending as pending_module
from agent.control.pending import Pending


@pytest.mark.parametrize("error", [False, True])
def test_callbacks_run_in_order_and_a_raise_is_logged(
        error: bool, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []

    def first(arg: str, p: Pending[int]) -> None:
        seen.append((arg, p.done(), p.exception() if error else p.result()))
        raise RuntimeError("boom")

    def second(arg: str, p: Pending[int]) -> None:
        seen.append(arg)

    p: Pending[int] = Pending()
    p.then(first, "a")
    p.then(second, "b")
    p.then(second, "c")
    with caplog.at_level(logging.ERROR, logger="agent.control.pending"):
        if error:
            failure = ValueError("no")
            p.set_exception(failure)
        else:
            p.set_result(5)
    assert seen == [("a", True, failure if error else 5), "b", "c"]
    assert [r.getMessage() for r in caplog.records] == ["a callback of a resolved request failed"]
    p.then(second, "late")  # already resolved: at once
    assert seen[-1] == "late"


def test_a_lone_callback_is_called_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails where the lone callback still goes through ``_call``."""
    def no(*_: object) -> None:
        raise AssertionError("called through _call")

    monkeypatch.setattr(pending_module, "_call", no)
    got: list[Any] = []
    p: Pending[int] = Pending()
    p.then(lambda arg, q: got.append((arg, q.result())), "x")
    p.set_result(3)
    assert got == [("x", 3)]
