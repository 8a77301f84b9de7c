"""Fixtures for the TUI tests: a fixed clock and time zone."""

from __future__ import annotations

import os
import time

# Rendered times are local: pin the zone so snapshots match on every machine.
os.environ["TZ"] = "UTC"
time.tzset()

FIXED_NOW = 1_790_000_100.0
