"""PBFT's durable state in ``<data_dir>/pbft/``: what a replica must not forget.

Files (each replaced atomically: written to ``.tmp``, fsynced, renamed, the
directory fsynced):

* ``genesis``: the replica set and their public keys (``Genesis``, wire-encoded);
* ``hard``: the view and whether it was entered (msgpack ``[view, active]``);
* ``stable``: the last stable checkpoint: seq, state digest, the application
  snapshot and the 2f+1 signed CHECKPOINTs (msgpack);
* ``group``: the replica group after the last replacement, if any (msgpack
  ``[replicas, previous, switched_at]``; ``agent/pbft/reconfig.py``);
* ``log``: length-prefixed records (``agent/framing.py``): what this replica
  signed and the certificates it prepared (``PersistRecord``), appended and
  fdatasynced before any message that depends on them leaves.  When a
  checkpoint becomes stable the log is rewritten without the records at or
  below it, so it stays bounded by the window.

A torn last record (a crash mid-append) is dropped on load: nothing that
depended on it was sent.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import msgpack

from agent import wire
from agent.durable import replace_file
from agent.errors import ProtocolError, StorageError
from agent.framing import FRAME_HEADER_SIZE, MAX_FRAME_SIZE, body_length, frame
from agent.pbft.messages import (
    Checkpoint,
    Commit,
    Genesis,
    HardState,
    NewView,
    PersistRecord,
    Prepare,
    PreparedCert,
    PrePrepare,
    Restored,
    StableCheckpoint,
    ViewChange,
)
from agent.pbft.reconfig import GroupInfo


def _record_seq(record: PersistRecord) -> int:
    if isinstance(record, PreparedCert):
        return record.preprepare.seq
    if isinstance(record, ViewChange | NewView):
        return 1 << 62  # kept (the newest only, ``keep_records``): the view matters after a restart
    return record.seq


def keep_records(records: list[PersistRecord], low: int) -> list[PersistRecord]:
    """The records above the stable checkpoint, and the newest VIEW-CHANGE and NEW-VIEW."""
    newest = {
        kind: max((r.view for r in records if isinstance(r, kind)), default=-1)
        for kind in (ViewChange, NewView)
    }
    out: list[PersistRecord] = []
    for r in records:
        if isinstance(r, ViewChange | NewView):
            if r.view == newest[type(r)]:
                out.append(r)
        elif _record_seq(r) > low:
            out.append(r)
    return out


def _encode_record(record: PersistRecord) -> bytes:
    if isinstance(record, PreparedCert):
        body = [1, wire.encode(record.preprepare), [wire.encode(p) for p in record.prepares]]
    else:
        body = [0, wire.encode(record)]
    return bytes(msgpack.packb(body, use_bin_type=True))


def _decode_record(data: bytes) -> PersistRecord:
    body = msgpack.unpackb(data, raw=False)
    if body[0] == 1:
        pp = wire.decode(body[1])
        prepares = tuple(wire.decode(p) for p in body[2])
        if not isinstance(pp, PrePrepare) or not all(isinstance(p, Prepare) for p in prepares):
            raise ProtocolError("not a prepared certificate")
        return PreparedCert(pp, prepares)  # type: ignore[arg-type]
    record = wire.decode(body[1])
    if not isinstance(record, PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView):
        raise ProtocolError(f"{type(record).__name__} is not a PBFT log record")
    return record


class PbftStorage:
    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log_path = self.dir / "log"
        self._records: list[PersistRecord] = []
        self._fd = -1
        self._dirty = False

    # ------------------------------------------------------------ load

    def load_genesis(self) -> Genesis | None:
        data = self._read("genesis")
        if data is None:
            return None
        msg = wire.decode(data)
        if not isinstance(msg, Genesis):
            raise StorageError(f"{self.dir / 'genesis'} does not hold a PBFT genesis")
        return msg

    def load(self) -> Restored:
        self.close()  # (a host replaced out and in again loads a second time)
        hard = HardState()
        raw = self._read("hard")
        if raw is not None:
            view, active = msgpack.unpackb(raw)
            hard = HardState(int(view), bool(active))
        stable = None
        raw = self._read("stable")
        if raw is not None:
            seq, digest, snapshot, proof = msgpack.unpackb(raw, raw=False)
            checkpoints = tuple(wire.decode(p) for p in proof)
            if not all(isinstance(cp, Checkpoint) for cp in checkpoints):
                raise StorageError(f"{self.dir / 'stable'} holds something other than checkpoints")
            stable = StableCheckpoint(seq, digest, snapshot, checkpoints)  # type: ignore[arg-type]
        self._records = self._read_log()
        low = stable.seq if stable else 0
        self._records = keep_records(self._records, low)
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return Restored(hard, stable, tuple(self._records))

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def _read_log(self) -> list[PersistRecord]:
        try:
            data = self._log_path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[PersistRecord] = []
        at = 0
        head = FRAME_HEADER_SIZE
        while True:
            try:
                size = body_length(data, at, MAX_FRAME_SIZE)
            except ProtocolError:
                break
            if size < 0 or at + head + size > len(data):
                break  # the end, or a torn last record
            try:
                out.append(_decode_record(data[at + head : at + head + size]))
            except (ProtocolError, ValueError, IndexError, TypeError):
                break
            at += head + size
        return out

    # ------------------------------------------------------------ write

    def save_genesis(self, genesis: Genesis) -> None:
        self._replace("genesis", wire.encode(genesis))

    def append(self, records: list[PersistRecord], hard: HardState | None) -> None:
        """Append and sync (before the Ready's messages are sent)."""
        self.write(records, hard)
        self.sync()

    def write(self, records: list[PersistRecord], hard: HardState | None) -> None:
        """Append without syncing (group commit: ``sync`` once for several Readys).
        The hard state is small and rare: it is replaced and synced at once."""
        if records:
            blob = b"".join(frame(_encode_record(r)) for r in records)
            os.write(self._fd, blob)
            self._records.extend(records)
            self._dirty = True
        if hard is not None:
            self._replace("hard", bytes(msgpack.packb([hard.view, hard.active])))

    def sync(self) -> None:
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def save_stable(self, stable: StableCheckpoint) -> None:
        """A stable checkpoint: keep it, and drop the records at or below it."""
        proof = [wire.encode(cp) for cp in stable.proof]
        body = [stable.seq, stable.digest, stable.snapshot, proof]
        self._replace("stable", bytes(msgpack.packb(body, use_bin_type=True)))
        self._records = keep_records(self._records, stable.seq)
        blob = b"".join(frame(_encode_record(r)) for r in self._records)
        self._replace("log", blob)
        os.close(self._fd)
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _replace(self, name: str, data: bytes) -> None:
        replace_file(self.dir / name, data)

    def save_group(self, info: GroupInfo) -> None:
        """The replica group after a replacement (``agent/pbft/reconfig.py``), so a host
        that follows, or joined, restarts knowing it."""
        body = [list(info.replicas), list(info.previous), info.switched_at]
        self._replace("group", bytes(msgpack.packb(body, use_bin_type=True)))

    def load_group(self) -> GroupInfo | None:
        raw = self._read("group")
        if raw is None:
            return None
        replicas, previous, switched_at = msgpack.unpackb(raw, raw=False)
        return GroupInfo(tuple(replicas), tuple(previous), int(switched_at))

    def reset(self) -> None:
        """Forget the replica state of an earlier membership (a host replaced out and,
        later, in again starts from state transfer; its old views are long past)."""
        self.close()
        for name in ("hard", "stable", "log"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
        self._records = []

    def stats(self) -> dict[str, Any]:
        return {"records": len(self._records), "dir": str(self.dir)}

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
