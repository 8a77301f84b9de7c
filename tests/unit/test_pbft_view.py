"""The Consensus screen's PBFT view renders view, watermarks, window phases and evidence."""

from __future__ import annotations

from rich.console import Console

from meshtui.widgets.pbft_view import render_pbft


def _text(renderable: object) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_shows_the_view_the_watermarks_and_each_phase() -> None:
    pbft = {
        "view": 3, "primary": "n2", "active": True, "n": 4, "f": 1, "low": 64, "high": 192,
        "executed": 70, "checkpoint_lag": 6, "view_changes": 2,
        "window": [[65, "executed"], [71, "committed"], [72, "prepared"], [73, "pre-prepared"]],
        "evidence": [{"summary": "n4 signed two pre-prepares for view 2 seq 9: aa and bb"}],
    }
    out = _text(render_pbft(pbft))
    assert "view 3" in out and "primary n2" in out and "watermarks 64..192" in out
    assert "window █▓▒░" in out
    assert "EVIDENCE n4 signed two pre-prepares" in out


def test_render_without_status_says_so() -> None:
    assert "no status yet" in _text(render_pbft(None))


def test_render_and_status_show_the_group_and_a_pending_replacement() -> None:
    from meshtui.commands import pbft_group_lines

    pbft = {
        "view": 1, "primary": "n1", "active": True, "n": 4, "f": 1, "low": 0, "high": 64,
        "executed": 40, "replicas": ["n1", "n2", "n3", "n4"],
        "replace_pending": {"replicas": ["n1", "n2", "n3", "n5"], "at": 64},
    }
    out = _text(render_pbft(pbft))
    assert "replicas: n1 n2 n3 n4" in out
    assert "replacement pending: replicas become n1 n2 n3 n5 after checkpoint 64" in out
    assert pbft_group_lines({**pbft, "replace_pending": None, "retired": True}) == [
        "replicas: n1 n2 n3 n4", "retired: this host was replaced and no longer takes part"]
