"""The datagram side of the cookie echo (``agent.envelope``) that needs addresses
or time: which cookie to seal for which peer, first-contact resends, and how
often a refused datagram is answered.

Sans-IO: the transport passes ``now`` (monotonic seconds) and sends what these
return.  Everything is bounded, so a flood of refused datagrams or of
addresses costs memory up to the bounds below and no more.
"""

from __future__ import annotations

from agent.envelope import Grant

MAX_COOKIES = 4096
"""Peer addresses we hold a cookie for; the first learned is dropped when full
(its next datagram is refused and answered with a new grant)."""
SENT_RING = 256
"""Recent datagram sequences remembered with their destination, so a grant is
also filed under the address we used (it may differ from the peer's own)."""
PENDING_PER_ADDR = 4
"""Datagrams kept per address while we hold no cookie for it, for the resend."""
MAX_PENDING_ADDRS = 256
"""Addresses with datagrams kept for a resend; the oldest is dropped when full."""
PENDING_TTL = 1.0
"""Seconds a cookieless datagram is worth resending: SWIM's probes and gossip
are stale after about a probe interval (1 s on a LAN)."""
GRANT_INTERVAL = 0.02
"""Seconds between two grants to one address: a peer needs one grant per
handshake, and a replaying attacker cannot make us reflect more than this."""
MAX_GRANTS_PER_SECOND = 2000
"""Grants sent per second over all addresses (a bound on reflection)."""


class CookieJar:
    """The cookies peers granted us, by the address we send to."""

    __slots__ = ("_cookies", "_pending", "_sent")

    def __init__(self) -> None:
        self._cookies: dict[str, tuple[bytes, int]] = {}  # addr -> (cookie, echoed seq)
        self._pending: dict[str, list[tuple[float, bytes]]] = {}
        self._sent: list[tuple[int, str] | None] = [None] * SENT_RING

    def cookie_for(self, addr: str) -> bytes | None:
        """The cookie to seal a datagram to ``addr`` with; None before any grant."""
        held = self._cookies.get(addr)
        return held[0] if held is not None else None

    def sent(self, addr: str, seq: int, payload: bytes, cookieless: bool, now: float) -> None:
        """A datagram with sequence ``seq`` went to ``addr``; a cookieless one is
        kept for a resend once the grant it asks for arrives."""
        self._sent[seq % SENT_RING] = (seq, addr)
        if not cookieless:
            return
        kept = self._pending.get(addr)
        if kept is None:
            if len(self._pending) >= MAX_PENDING_ADDRS:
                del self._pending[next(iter(self._pending))]
            kept = self._pending[addr] = []
        kept.append((now, payload))
        if len(kept) > PENDING_PER_ADDR:
            del kept[0]

    def learn(self, from_addr: str, grant: Grant, now: float) -> list[tuple[str, bytes]]:
        """Take ``grant`` (already checked to answer this boot) from ``from_addr``;
        returns the kept datagrams to send again, as (address, payload)."""
        addrs = [from_addr]
        if grant.listen_addr and grant.listen_addr != from_addr:
            addrs.append(grant.listen_addr)
        slot = self._sent[grant.echo_seq % SENT_RING]
        if slot is not None and slot[0] == grant.echo_seq and slot[1] not in addrs:
            addrs.append(slot[1])
        resend: list[tuple[str, bytes]] = []
        for addr in addrs:
            held = self._cookies.get(addr)
            if held is not None and grant.echo_seq <= held[1]:
                continue  # answers an older datagram than the cookie we hold
            if held is None and len(self._cookies) >= MAX_COOKIES:
                del self._cookies[next(iter(self._cookies))]
            self._cookies[addr] = (grant.cookie, grant.echo_seq)
            for when, payload in self._pending.pop(addr, ()):
                if now - when <= PENDING_TTL:
                    resend.append((addr, payload))
        return resend

    def __len__(self) -> int:
        return len(self._cookies)


class GrantLimiter:
    """At most one grant per address per ``GRANT_INTERVAL`` and
    ``MAX_GRANTS_PER_SECOND`` in all."""

    __slots__ = ("_last", "_second", "_sent_this_second")

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._second = -1
        self._sent_this_second = 0

    def allow(self, addr: str, now: float) -> bool:
        second = int(now)
        if second != self._second:
            self._second = second
            self._sent_this_second = 0
        if self._sent_this_second >= MAX_GRANTS_PER_SECOND:
            return False
        last = self._last.get(addr)
        if last is not None and now - last < GRANT_INTERVAL:
            return False
        if last is None and len(self._last) >= MAX_COOKIES:
            self._last = {a: t for a, t in self._last.items() if now - t < GRANT_INTERVAL}
            if len(self._last) >= MAX_COOKIES:
                return False  # that many addresses within one interval: a flood
        self._last[addr] = now
        self._sent_this_second += 1
        return True
