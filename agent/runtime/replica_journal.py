"""The replica store's metadata journal: one append-only file per host, not a file per run.

Theory of operation (issue 14): a replica host used to keep each run's item
metadata in ``<root>/<task>/<epoch>.meta`` -- a directory and a file created per
task, on every host of the run's preference list, which was most of a replica's
work for short tasks (their output is empty: metadata is all there is).  Now
every run's metadata is one *record* appended to ``<root>/.meta-journal``::

    {"t": task id, "e": epoch, "rows": {item name: row}}\\n

A record holds the run's whole row set (the rows a ``.meta`` held) and
replaces any earlier record of that run; an empty row set drops the run.
Replaying the file in order therefore gives every run's latest rows.  The
records of one event-loop pass go in one ``write`` (``append``), made before
that pass's acks are sent, so nothing is acknowledged before its row is
written -- the same promise the ``.meta`` files gave, and, as they were, the
journal is not fsync'd (an item's *data* is, before its ack).

* Torn writes: a crash can leave a partial last record; replay skips a line
  that does not parse, and the next append starts on a fresh line.
* Growth: when the records in the file exceed twice the live runs plus
  ``COMPACT_MIN_RECORDS``, the store rewrites it with one record per live run
  (a temporary file, fsync'd, renamed over the journal), so its size stays
  proportional to what the host holds.
* The name starts with a dot, which no task id may (``output_store``), so it
  never collides with a task's directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.durable import replace_file

log = logging.getLogger(__name__)

JOURNAL_NAME = ".meta-journal"
COMPACT_MIN_RECORDS = 4096
"""Records the journal may hold beyond twice its live runs before it is rewritten
(default 4,096, about 0.5 MB of records): rewrites stay rare, their cost proportional
to what is held, and the file at most about twice its live size plus this."""

Rows = dict[str, dict[str, Any]]
RunKey = tuple[str, int]


class MetaJournal:
    """Appends run records to, replays and compacts one journal file (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.path = root / JOURNAL_NAME
        self.records = 0
        """Records in the file (live or superseded), counted since the last replay."""
        self._fresh_line = False
        """The file may end inside a record (a torn or failed write): begin with a newline."""

    def replay(self) -> dict[RunKey, Rows]:
        """Every run's latest non-empty rows, in the order the runs were last written."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        runs: dict[RunKey, Rows] = {}
        self.records = 0
        self._fresh_line = bool(data) and not data.endswith(b"\n")
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (str(record["t"]), int(record["e"]))
                rows = record["rows"]
                if not isinstance(rows, dict):
                    raise TypeError("rows is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("replica journal %s: a record skipped (%s)", self.path, exc)
                continue
            self.records += 1
            runs.pop(key, None)
            if rows:
                runs[key] = rows
        return runs

    def append(self, records: list[tuple[RunKey, Rows]]) -> None:
        """Write ``records`` in one ``write`` (``OSError`` if they could not all be)."""
        if not records:
            return
        data = b"".join(_line(key, rows) for key, rows in records)
        if self._fresh_line:
            data = b"\n" + data
        self._fresh_line = True  # until the whole write is in
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self._fresh_line = False
        self.records += len(records)

    def wants_compaction(self, live_runs: int) -> bool:
        return self.records > 2 * live_runs + COMPACT_MIN_RECORDS

    def compact(self, live: list[tuple[RunKey, Rows]]) -> None:
        """Rewrite the file as one record per live run (``OSError`` leaves the old one)."""
        # Rare, and the whole host's metadata: durable before and after the rename.
        replace_file(self.path, b"".join(_line(key, rows) for key, rows in live))
        self.records = len(live)
        self._fresh_line = False


def _line(key: RunKey, rows: Rows) -> bytes:
    return json.dumps({"t": key[0], "e": key[1], "rows": rows}, separators=(",", ":")).encode() \
        + b"\n"
