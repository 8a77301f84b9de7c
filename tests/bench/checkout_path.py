"""Puts this checkout's root and its ``tests/`` first on ``sys.path``, for the benchmarks.

Benchmarks are scripts (``python tests/bench/bench_x.py``), not pytest modules,
so pytest's ``pythonpath = ["tests"]`` does not reach them: each imports this
module before anything from the project, then imports shared test code the way
the tests do (``from sim.swimnet import SwimNet``, ``from netns.harness import
NetnsLab``).  The root goes first so a benchmark measures the checkout it lives
in, not whichever one the venv has installed (the old and the new commit of a
comparison each run their own code).  This is the one place under ``tests/``
that edits ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]

for _entry in (str(_ROOT / "tests"), str(_ROOT)):  # inserted in turn: the root ends up first
    if _entry in sys.path:
        sys.path.remove(_entry)
    sys.path.insert(0, _entry)
