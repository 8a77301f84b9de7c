"""A fault injector for the PBFT namespace test: ``mesh-agent run`` whose PBFT
replica equivocates.  Test harness only -- the shipped CLI has no such mode.

Run as ``python tests/netns/pbft_equivocator.py run ...`` (the same arguments as
``python -m agent.cli run``).  Every pre-prepare, PREPARE and COMMIT the replica
signs goes as signed to half of its peers; the other half get the same message
for another digest (an empty batch for a pre-prepare), also signed with the
replica's own key.  Correct replicas must stay consistent and report it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.pbft.messages import Commit, Outbound, Prepare, PrePrepare
from agent.pbft.signing import batch_digest, sign
from agent.pbft.state import ReplicaState

_honest = ReplicaState._broadcast


def _lie(msg: Any) -> Any:
    if isinstance(msg, PrePrepare):
        # A non-empty batch's twin is the empty batch (a valid pre-prepare too).
        digest = batch_digest(()) if msg.requests else hashlib.sha256(b"lie" + msg.digest).digest()
        return dataclasses.replace(msg, requests=(), digest=digest)
    return dataclasses.replace(msg, digest=hashlib.sha256(b"lie" + msg.digest).digest())


def _equivocating_broadcast(self: ReplicaState, msg: Any) -> None:
    if not isinstance(msg, PrePrepare | Prepare | Commit) or msg.frm != self.id:
        _honest(self, msg)
        return
    peers = [r for r in self.group.replicas if r != self.id]
    for i, peer in enumerate(peers):
        out = msg if i % 2 == 0 else sign(self._signer, _lie(msg))
        self._msgs.append(Outbound(peer, out))


ReplicaState._broadcast = _equivocating_broadcast  # type: ignore[method-assign]

if __name__ == "__main__":
    from agent.cli import main

    sys.exit(main(sys.argv[1:]))
