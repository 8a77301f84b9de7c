"""Fixtures for the TUI tests: the replay client on sys.path, a fixed clock and time zone."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# Rendered times are local: pin the zone so snapshots match on every machine.
os.environ["TZ"] = "UTC"
time.tzset()
sys.path.insert(0, str(Path(__file__).parent))

FIXED_NOW = 1_790_000_100.0
