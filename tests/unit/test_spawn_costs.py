"""Issue 14: what a burst of short runs saves per spawn -- a command name found on a
PATH is not searched again for FOUND_FOR_S (a removed one is missed again after
it), and an empty capture's digest is the empty digest without reading the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.containment.jail import FOUND_FOR_S, locate
from agent.runtime.replica_store import ReplicaStore
from agent.runtime.replication import Replicator


def test_a_found_command_is_not_searched_again_for_a_second(tmp_path: Path) -> None:
    tool = tmp_path / "mt-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    path = str(tmp_path)
    assert locate("mt-tool", path, "/", now=100.0) is not None
    tool.unlink()
    assert locate("mt-tool", path, "/", now=100.0 + FOUND_FOR_S / 2) is not None  # not searched
    assert locate("mt-tool", path, "/", now=100.0 + FOUND_FOR_S + 0.01) is None
    assert locate("mt-tool", path, "/", now=100.0 + FOUND_FOR_S + 0.02) is None
    assert locate("mt-missing", path, "/", now=100.0) is None  # misses are never cached


def test_an_empty_capture_gets_the_empty_digest(tmp_path: Path) -> None:
    replicator = Replicator(node_id="a", store=ReplicaStore(tmp_path / "r", "a"),
                            targets=lambda _k: ["a"], send=lambda _n, _m: None)
    for name, data in (("out", b""), ("err", b"oops\n")):
        capture = tmp_path / f"1.{name}"
        capture.write_bytes(data)
        replicator.add_source("t1", 1, name, capture, "t1")
        replicator.finish_source("t1", 1, name, 5.0)
        item = replicator.item("t1", 1, name)
        assert item is not None and item.complete and item.size == len(data)
        assert item.sha256 == hashlib.sha256(data).hexdigest()
