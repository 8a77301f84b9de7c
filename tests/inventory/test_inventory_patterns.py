"""``--limit`` host patterns: every operator, order, and unknown-pattern errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory import InventoryError, load_inventory
from inventory.loader import Inventory

INVENTORY = """
all:
  hosts:
    solo:
  children:
    web:
      hosts:
        web[01:04]:
    db:
      hosts:
        db01:
        db02:
    seeds:
      hosts:
        web01:
        db01:
    prod:
      children:
        web:
        db:
"""


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    path = tmp_path_factory.mktemp("pat") / "inv.yml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def names(inv: Inventory, pattern: str | None) -> list[str]:
    return [h.name for h in inv.select(pattern)]


ALL = ["solo", "web01", "web02", "web03", "web04", "db01", "db02"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (None, ALL),
        ("", ALL),
        ("all", ALL),
        ("*", ALL),
        ("web", ["web01", "web02", "web03", "web04"]),
        ("prod", ALL[1:]),
        ("ungrouped", ["solo"]),
        ("web02", ["web02"]),
        ("db*", ["db01", "db02"]),
        ("web0[13]", ["web01", "web03"]),
        ("*01", ["web01", "db01"]),
        ("~^web0[24]$", ["web02", "web04"]),
        ("db:solo", ["solo", "db01", "db02"]),
        ("db,solo", ["solo", "db01", "db02"]),
        ("web:&seeds", ["web01"]),
        ("prod:!web", ["db01", "db02"]),
        ("all:!prod", ["solo"]),
        ("!web", ["solo", "db01", "db02"]),
        ("&seeds", ["web01", "db01"]),
        ("web:db:&seeds:!db01", ["web01"]),
        ("web,!web03,!web04", ["web01", "web02"]),
        ("web[0]", ["web01"]),
        ("web[-1]", ["web04"]),
        ("web[1:2]", ["web02", "web03"]),
        ("web[2:]", ["web03", "web04"]),
        ("web[:1]", ["web01", "web02"]),
        ("seeds:web01", ["web01", "db01"]),
    ],
)
def test_patterns(inv: Inventory, pattern: str | None, expected: list[str]) -> None:
    assert names(inv, pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("webz", "no group or host matches 'webz'"),
        ("web:!nosuch", "no group or host matches 'nosuch'"),
        ("web:&nosuch*", "no group or host matches 'nosuch*'"),
        ("~[", "bad regex"),
        ("web[9]", "out of range"),
        (",,", "empty host pattern"),
    ],
)
def test_unknown_patterns_are_one_line_errors(inv: Inventory, pattern: str, reason: str) -> None:
    with pytest.raises(InventoryError) as info:
        inv.select(pattern)
    message = str(info.value)
    assert message.startswith(f"{inv.path}: --limit "), message
    assert reason in message
    assert "\n" not in message


def test_empty_group_is_known_but_selects_nothing(tmp_path: Path) -> None:
    path = tmp_path / "inv.ini"
    path.write_text("[web]\na\n[empty]\n")
    inv = load_inventory(path)
    assert names(inv, "empty") == []
    assert names(inv, "all:!empty") == ["a"]
