"""``kv.put``'s handler takes the usual params (every one of its exact type, a rid,
no ttl) straight to its row (issue 14, session 8), without ``param_str``,
``param_bytes`` and ``request_id``: it submits what they would have led to, and
anything else takes them, with their refusals -- the same submission or the same
error as the handler of 2806b5e (``_reference``) for any params."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.runtime.handlers import kv
from agent.runtime.handlers.common import param_bytes, param_str, request_id
from agent.state.commands import KvPut, PutRow, put_command, row_command, usual_put

AT = 1_700_000_000.5


class _Raft:
    """A leader's proposer: records what the handler submits."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def submit(self, command: bytes, **_: Any) -> None:
        self.got.append(("bytes", command))

    def submit_decoded(self, decoded: Any, finish: Any = None) -> None:
        self.got.append(("decoded", decoded))


class _Clock:
    @staticmethod
    def time() -> float:
        return AT


def _reference(params: dict[str, Any]) -> Any:
    """What the handler of 2806b5e submitted for ``params`` (a ttl put: that it went as bytes)."""
    ns, key = param_str(params, "ns", "default"), param_str(params, "key")
    value, ttl = param_bytes(params, "value"), params.get("ttl")
    if ttl is None or ttl == 0:
        rid, at = request_id(params), AT
        if usual_put(rid, at, ns, key, value):
            return ("decoded", (rid, at, ns, key, value))
        return ("decoded", put_command(ns, key, value, rid, at))
    ttl_ms = round(float(ttl) * 1000) if math.isfinite(float(ttl)) else 0
    if ttl_ms < 1:
        raise ValueError("parameter 'ttl' must be a positive number of seconds")
    request_id(params)
    return ("ttl",)


def _outcome(make: Any) -> Any:
    try:
        return make()
    except (ValueError, ProtocolError) as exc:
        return ("refused", type(exc).__name__, str(exc))


def _submitted(params: dict[str, Any]) -> Any:
    raft = _Raft()
    handler = kv.handlers(raft, None)["kv.put"]  # type: ignore[arg-type]
    try:
        handler(params)
    except (ValueError, ProtocolError) as exc:
        return ("refused", type(exc).__name__, str(exc))
    kind, what = raft.got[0]
    return ("ttl",) if kind == "bytes" else (kind, what)


def _same(a: Any, b: Any, params: dict[str, Any]) -> bool:
    """Equal, but a rid the handler made up (none given) may differ."""
    if params.get("rid"):
        return bool(a == b)
    def plain(x: Any) -> Any:
        if x[0] != "decoded":
            return x
        whole = row_command(x[1]) if type(x[1]) is tuple else x[1]
        return (whole.body, whole.at)
    return bool(plain(a) == plain(b))


class _Str(str):
    pass


class _Bytes(bytes):
    pass


SAMPLES: list[dict[str, Any]] = [
    {"ns": "bench", "key": "w1-3", "value": b"v" * 100, "rid": "r1"},
    {"key": "k", "value": b"v", "rid": "r1"},  # the default ns
    {"ns": "a", "key": "k", "value": "text", "rid": "r1"},  # str value: its utf-8
    {"ns": "a", "key": "k", "value": b"v"},  # no rid: one is made up
    {"ns": "a", "key": "k", "value": b"v", "rid": ""},
    {"ns": "a", "key": "k", "value": b"v", "rid": "r" * 128},
    {"ns": "a", "key": "k", "value": b"v", "rid": "r" * 129},
    {"ns": "a", "key": "k", "value": b"v", "rid": 5},
    {"ns": "a", "key": "", "value": b"v", "rid": "r"},
    {"ns": "", "key": "k", "value": b"v", "rid": "r"},
    {"ns": "a", "key": "k" * 5000, "value": b"v", "rid": "r"},
    {"ns": "a", "key": "k", "value": b"v" * (2 << 20), "rid": "r"},
    {"ns": "a", "value": b"v", "rid": "r"},  # no key
    {"ns": "a", "key": 3, "value": b"v", "rid": "r"},
    {"ns": None, "key": "k", "value": b"v", "rid": "r"},
    {"ns": "a", "key": "k", "rid": "r"},  # no value
    {"ns": "a", "key": "k", "value": 7, "rid": "r"},
    {"ns": "a", "key": "k", "value": b"v", "rid": "r", "ttl": 0},
    {"ns": "a", "key": "k", "value": b"v", "rid": "r", "ttl": 5},
    {"ns": _Str("a"), "key": _Str("k"), "value": _Bytes(b"v"), "rid": _Str("r")},
]


@pytest.mark.parametrize("params", SAMPLES)
def test_the_handler_submits_what_the_old_one_did(
        params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "time", _Clock)
    got, want = _submitted(params), _outcome(lambda: _reference(params))
    assert _same(got, want, params), (got, want)


_texts = st.text(max_size=3) | st.just("x" * 129) | st.just("")
_param = st.none() | st.integers(-1, 1) | _texts | st.binary(max_size=3) | st.floats(0, 2)


@settings(max_examples=200, deadline=None)
@given(params=st.dictionaries(st.sampled_from(["ns", "key", "value", "rid", "ttl"]), _param))
def test_any_params(params: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kv, "time", _Clock)
        got, want = _submitted(params), _outcome(lambda: _reference(params))
    assert _same(got, want, params), (got, want)


def test_the_usual_put_skips_the_param_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails where the usual put still goes through param_str and the others."""
    def no(*_: object) -> None:
        raise AssertionError("the general path was taken")

    for name in ("param_str", "param_bytes", "request_id"):
        monkeypatch.setattr(kv, name, no)
    monkeypatch.setattr(kv, "time", _Clock)
    params = {"ns": "bench", "key": "w1-3", "value": b"v" * 100, "rid": "r1"}
    row: PutRow = ("r1", AT, "bench", "w1-3", b"v" * 100)
    assert _submitted(params) == ("decoded", row)
    assert row_command(row).body == KvPut("bench", "w1-3", b"v" * 100)
