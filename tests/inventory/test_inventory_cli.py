"""``meshtui deploy|undeploy|upgrade|keys -i FILE`` glue: one-line errors and exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from inventory.cli import EXIT_USAGE, run_inventory_command


def args(inventory: Path, limit: str | None = None, **extra: object) -> argparse.Namespace:
    return argparse.Namespace(inventory=str(inventory), limit=limit, **extra)


def test_malformed_inventory_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "inv.yml"
    bad.write_text("all:\n  hosts:\n    a:\n  hots: {}\n")
    assert run_inventory_command("deploy", args(bad)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"meshtui: {bad}:4: unknown key 'hots' in group 'all'\n"


def test_unknown_limit_pattern_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("[web]\nw1\n")
    assert run_inventory_command("undeploy", args(inv, "wbe", purge=False)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == f"meshtui: {inv}: --limit 'wbe': no group or host matches 'wbe'\n"


def test_keys_use_without_id_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("[web]\nw1\n")
    assert run_inventory_command("keys", args(inv, op="use", key=None)) == EXIT_USAGE
    assert capsys.readouterr().err == "meshtui keys: KEY_ID: required for keys use\n"


def test_empty_selection_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.ini"
    inv.write_text("[web]\nw1\n[empty]\n")
    assert run_inventory_command("upgrade", args(inv, "empty")) == 0
    assert capsys.readouterr().out == "upgrade: 0 hosts: nothing to do\n"
