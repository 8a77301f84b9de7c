"""A leader's ``kv.put`` is validated in the handler but encoded only when its entry
needs its bytes (``commands.put_command``, ``consensus_requests.submit_decoded``;
issue 14): a ``kv.puts`` group commit never packs it on its own.  Whatever the
release gate says, the handler's fast path proposes the very entries the encoding
path proposes (same bytes, in the same order), answers the same results and
refusals, and leaves the same snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_consensus_group_commit import WAIT, leading

from agent.raft.core import RaftNode
from agent.runtime import consensus_requests
from agent.runtime.compat import batches_applied
from agent.runtime.handlers import kv
from agent.state.commands import (
    MAX_KEY_LEN,
    Command,
    KvPut,
    encode_command,
    encode_command_decoded,
    put_command,
)

AT = 1_700_000_000.5


def gate(*versions: str | None) -> Any:
    members = [SimpleNamespace(meta=SimpleNamespace(version=v)) for v in versions]
    return batches_applied(lambda: members)  # type: ignore[arg-type,return-value]


GATES: dict[str, Callable[[], Callable[[], bool]]] = {
    "compact": lambda: gate("0.3.0", "0.3.0"),
    "batch only": lambda: gate("0.3.0", "0.2.0"),
    "plain gate": lambda: (lambda: True),
    "no batches": lambda: gate("0.1.0"),
}


class Plain:
    """The driver without ``submit_decoded``: the handler encodes every put itself."""

    def __init__(self, driver: Any) -> None:
        self.submit = driver.submit
        self.propose = driver.propose
        self.read_barrier = driver.read_barrier


async def _outcome(handler: Any, params: dict[str, Any]) -> Any:
    try:
        return ("ok", await handler(params))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


async def _writes(put: Any, tag: str) -> list[Any]:
    """A burst (with a refused key and a retried rid in it), then a lone put."""
    burst = [{"ns": "t", "key": f"k{i % 3}", "value": b"v%d" % i, "rid": f"{tag}{i}"}
             for i in range(6)]
    burst.insert(2, {"ns": "t", "key": "x" * (MAX_KEY_LEN + 1), "value": b"v", "rid": "long"})
    burst.append(dict(burst[1]))  # the same rid again: its cached row
    burst.append({"ns": "t", "key": "s", "value": "text", "rid": f"{tag}-str"})
    answers = await asyncio.wait_for(asyncio.gather(*(_outcome(put, p) for p in burst)), WAIT)
    lone = await asyncio.wait_for(_outcome(put, {"ns": "t", "key": tag, "value": b"1"}), WAIT)
    return [*answers, lone]


def _run(tmp_path: Path, deferred: bool) -> Any:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run_patched(tmp_path, monkeypatch, deferred)


def _run_patched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deferred: bool) -> Any:
    """Every gate in turn on one leader: {gate: (entries proposed, answers)}, snapshot."""
    proposed: list[bytes] = []
    real = RaftNode.propose

    def spy(node: RaftNode, data: bytes) -> tuple[int, int]:
        proposed.append(data)
        return real(node, data)

    clock = SimpleNamespace(time=lambda: AT)
    monkeypatch.setattr(kv, "time", clock)
    monkeypatch.setattr(consensus_requests, "time", clock)
    # A rid-less put gets a random rid: a fixed one, so both runs write the same.
    monkeypatch.setattr(kv, "request_id", lambda params: params.get("rid") or "fresh")

    async def run() -> Any:
        driver = await leading(tmp_path)
        try:
            monkeypatch.setattr(RaftNode, "propose", spy)
            put = kv.handlers(driver if deferred else Plain(driver), driver.queries)["kv.put"]
            seen: dict[str, Any] = {}
            for name, gate_of in GATES.items():
                driver.use_batch_gate(gate_of())
                answers = await _writes(put, name)
                seen[name] = (list(proposed), answers)
                proposed.clear()
            return seen, driver._state.snapshot()
        finally:
            await driver.close()

    return asyncio.run(run())


def test_a_deferred_put_proposes_what_the_encoded_put_proposes(tmp_path: Path) -> None:
    slow, slow_snapshot = _run(tmp_path / "slow", deferred=False)
    fast, fast_snapshot = _run(tmp_path / "fast", deferred=True)
    for name in GATES:
        assert fast[name][0] == slow[name][0], name  # the same entries, byte for byte, in order
        assert fast[name][1] == slow[name][1], name  # the same answers and refusals
        answers = fast[name][1]
        assert answers[2][0] == "error" and "key must be" in answers[2][2]
        assert answers[-1][0] == "ok" and all(a[0] == "ok" for a in answers[:2])
    assert fast_snapshot == slow_snapshot
    assert b"kv.puts" in fast["compact"][0][0]  # that burst went as one kv.puts entry
    assert len(fast["compact"][0]) == 2 and len(fast["no batches"][0]) == 9


def test_put_command_is_the_encoders_decoded_form() -> None:
    cases = [("ns", "k", b"v", "rid", AT), ("ns", "k", b"", "", AT),
             ("n" * 300, "k", b"v", "r", AT), ("ns", "", b"v", "r", AT), ("ns", "k", b"v", "r", 7)]
    for ns, key, value, rid, at in cases:
        try:
            expected: Command | str | None = encode_command_decoded(KvPut(ns, key, value), rid, at)[1]
        except Exception as exc:
            expected = str(exc)
        try:
            got: Command | str = put_command(ns, key, value, rid, at)
        except Exception as exc:
            got = str(exc)
        assert got == expected
        if isinstance(got, Command):
            assert encode_command(got.body, got.rid, got.at) == encode_command(KvPut(ns, key, value), rid, at)
