"""Waiting for a leader: who counts as a real minority, and the request timeout.

A write or linearizable read on a node that knows no working leader -- the
cluster is forming, or electing after its leader died -- waits for one
instead of failing (issue 20).  The wait is woken by the leader change
(``changed``, from the Raft driver's ready loop), rechecked every election
timeout, and bounded by the request's timeout.

Only a real minority fails at once (``NoQuorumError``, exit code 3 in the
CLI): a node that has heard from fewer than a majority of the voters (itself
included) within ``MINORITY_WINDOW`` election timeouts, and whose link layer
does not reach them either.  Any Raft message counts -- heartbeats, appends,
votes, pre-votes -- so the followers of a dead leader, which hear each
other's (pre-)vote requests, are not a minority while they elect; and a voter
the link layer reaches now, directly or over a relay (``reachable``, the
router's link state), counts too: a follower hears only its leader over
Raft, so when that one link is cut it would otherwise look like a minority
while it still reaches the others.  A node cut off with fewer than a
majority is one within two election timeouts.

The request timeout: ``request_timeout`` in a control request's params (the
CLI's ``--request-timeout`` / ``MESHTUI_REQUEST_TIMEOUT``) rides to the
driver in the ``REQUEST_TIMEOUT`` context variable, set around the handler
call (``handlers.strict``); without it the agent's ``runtime.commit_timeout``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

from agent.errors import NoQuorumError
from agent.raft.core import RaftNode

MINORITY_WINDOW = 2
"""Election timeouts (count) a voter must have been silent to not count towards this
node's majority.  Two: a follower hears only the leader; when it dies, a candidate's
(pre-)vote request reaches the others within one more (randomized) election timeout,
so a node on the majority side never looks like a minority while the cluster elects."""

MAX_REQUEST_TIMEOUT = 300.0
"""Upper bound (seconds) of a client's ``request_timeout``: a typo must not park a
request for hours."""

REQUEST_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_timeout", default=None
)
"""The current control request's timeout (seconds), None: the agent's default."""


def request_timeout_param(value: object) -> float | None:
    """A request's ``request_timeout`` param checked: seconds, or None if absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("parameter 'request_timeout' must be a number of seconds")
    if not 0 < value <= MAX_REQUEST_TIMEOUT:
        raise ValueError(f"parameter 'request_timeout' must be in (0, {MAX_REQUEST_TIMEOUT:g}] seconds")
    return float(value)


def _unknown(node_id: str) -> bool:
    """No link layer attached: reachability unknown, only Raft traffic counts."""
    return False


class LeaderWait:
    """Leader waiters and the per-voter "last heard" ticks of one Raft driver."""

    def __init__(self, node_id: str, core: Callable[[], RaftNode], election_timeout: float,
                 election_ticks: int, default_timeout: float) -> None:
        """``core()`` is the driver's current RaftNode (it is replaced on bootstrap);
        ``default_timeout`` (seconds) bounds a wait when the request names none."""
        self._node_id = node_id
        self._core = core
        self._recheck = election_timeout
        self._window = MINORITY_WINDOW * election_ticks
        self.default_timeout = default_timeout
        self.ticks = 0
        """Driver ticks so far (the clock of ``heard``)."""
        self.heard: dict[str, int] = {}
        """Peer id → ``ticks`` at its last Raft message (the driver's ``step`` writes it)."""
        self.reachable: Callable[[str], bool] = _unknown
        """Does the link layer reach this voter now (directly or over a relay)?  Set by
        the composition root to the router's; a voter it reaches counts too."""
        self._waiters: list[asyncio.Future[None]] = []

    def deadline(self) -> float:
        """Loop time by which the current request gives up waiting."""
        timeout = REQUEST_TIMEOUT.get()
        return asyncio.get_running_loop().time() + (timeout or self.default_timeout)

    def minority(self) -> bool:
        """A real minority (see the module doc).  Never while forming (no voters
        known) or before this node could have heard from anyone."""
        node = self._core()
        voters = node.conf.voters
        if not voters or node.has_quorum_contact() or self.ticks < self._window:
            return False
        recent = self.ticks - self._window
        heard = self.heard
        reachable = self.reachable
        count = sum(
            1 for v in voters
            if v == self._node_id or heard.get(v, -1) >= recent or reachable(v)
        )
        return count < len(voters) // 2 + 1

    def leader(self, refused: str = "") -> str:
        """The working leader other than ``refused`` (our own id when we lead), or ""."""
        node = self._core()
        if not node.has_quorum_contact():
            return ""
        if node.is_leader():
            return self._node_id
        leader = node.leader_id
        return leader if leader != refused else ""

    async def wait(self, deadline: float, refused: str = "") -> str:
        """``leader(refused)`` once there is one (any leader after a leader change);
        ``NoQuorumError`` past ``deadline`` or as soon as this node is a real minority."""
        loop = asyncio.get_running_loop()
        while not (leader := self.leader(refused)):
            now = loop.time()
            if now >= deadline:
                raise NoQuorumError("no leader within the request timeout")
            if self.minority():
                raise NoQuorumError("fewer than a majority of the voters heard from")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:  # woken by a leader change; rechecked every election timeout
                await asyncio.wait_for(waiter, min(self._recheck, deadline - now))
                refused = ""  # a new election: the node that refused may lead now
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return leader

    def changed(self) -> None:
        """The core names a new leader: wake every waiter to look again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
