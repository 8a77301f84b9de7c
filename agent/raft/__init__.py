"""Raft consensus: a sans-IO core (``core.RaftNode``), its messages, and durable WAL storage.

The core never touches the clock, sockets or disks: the runtime feeds it ticks and
messages, and acts on the ``Ready`` batches it returns (persist → send → apply →
advance).  ``storage.Storage`` is the real on-disk half (segmented WAL + snapshots).
"""
