"""registry_loaded(): lazy import of the cores' WIRE_TYPES, range checks; a listed
core that is missing is an error, not silently skipped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import wire


@pytest.fixture
def fake_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("fakecore"):
            del sys.modules[name]


def write_core(root: Path, package: str, body: str) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "messages.py").write_text(body)


def use_modules(monkeypatch: pytest.MonkeyPatch, ranges: dict[str, tuple[int, int]]) -> None:
    monkeypatch.setattr(wire, "_CORE_MODULES", tuple(ranges))
    monkeypatch.setattr(wire, "MSG_RANGES", {**wire.MSG_RANGES, **ranges})


def test_a_listed_core_that_is_missing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    use_modules(monkeypatch, {"agent.not_written_yet.messages": (200, 209)})
    with pytest.raises(ModuleNotFoundError, match=r"agent\.not_written_yet"):
        wire.registry_loaded()


def test_the_pbft_range_holds_the_pbft_messages() -> None:
    assert wire.MSG_RANGES["agent.pbft.messages"] == (90, 109)
    assert "agent.pbft.messages" in wire._CORE_MODULES
    pbft = {n: c for n, c in wire.registry_loaded().items() if 90 <= n <= 109}
    assert pbft and all(c.__module__ == "agent.pbft.messages" for c in pbft.values())
    assert set(wire._CORE_MODULES) <= set(wire.MSG_RANGES)


def test_a_core_whose_import_is_broken_raises(
        fake_cores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_core(fake_cores, "fakecore_broken", "import no_such_dependency_xyz\n")
    use_modules(monkeypatch, {"fakecore_broken.messages": (200, 209)})
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        wire.registry_loaded()


def test_numbers_outside_the_owners_range_are_a_bug(
        fake_cores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_core(fake_cores, "fakecore_range", (
        "from dataclasses import dataclass\n"
        "@dataclass(frozen=True, slots=True)\n"
        "class Stray:\n"
        "    a: int\n"
        "WIRE_TYPES = {5: Stray}\n"))
    use_modules(monkeypatch, {"fakecore_range.messages": (210, 219)})
    with pytest.raises(AssertionError, match="outside 210-219"):
        wire.registry_loaded()


def test_a_new_core_is_registered_once(fake_cores: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_core(fake_cores, "fakecore_ok", (
        "from dataclasses import dataclass\n"
        "@dataclass(frozen=True, slots=True)\n"
        "class Probe:\n"
        "    n: int\n"
        "    tags: tuple[str, ...] = ()\n"
        "WIRE_TYPES = {225: Probe}\n"))
    use_modules(monkeypatch, {"fakecore_ok.messages": (220, 229)})
    monkeypatch.setattr(wire, "_scanned", False)
    try:
        from fakecore_ok.messages import Probe  # type: ignore[import-not-found]

        # decode() finds an unknown number by scanning the cores once.
        data = b"\x93\x01\xcc\xe1\x07"  # [1, 225, 7]
        assert wire.decode(data) == Probe(7)
        assert wire.registry_loaded()[225] is Probe
        assert wire.registry_loaded()[225] is Probe  # idempotent
    finally:
        wire._by_class.pop(wire._by_number.pop(225).cls, None)
        wire._loaded_modules.discard("fakecore_ok.messages")
