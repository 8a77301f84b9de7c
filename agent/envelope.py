"""Envelopes: who sealed a packet, and proof that it is fresh (no replay).

Theory of operation
-------------------
Inside every sealed packet (:mod:`agent.crypto`, seal version 2) the plaintext
starts with a 33-byte header, authenticated with the rest::

    channel (1) | sender (8) | boot (8) | cookie (8) | sequence (u64) | payload

``sender`` is the first 8 bytes of SHA-256 of the sender's node id.  ``boot``
is 8 random bytes drawn at every process start and never stored: no two runs
of a node share one, whatever its data dir or its clock says.  ``sequence``
counts per channel from 1 within one boot.  ``cookie`` is the receiver's own
proof of freshness, below.  ``channel`` says what the packet is (DATAGRAM,
STREAM, GRANT, CHALLENGE), so no packet can be taken for another kind.

Why not an incarnation number kept by the sender (seal version 1 had one, a
boot counter in the data dir)?  The receiver then trusted a number the sender
chose, and that fails three ways: a data dir restored from an older copy
starts *below* what its peers remember, so they drop everything it sends as
replays; a receiver that restarts has forgotten its windows, so recorded
packets are accepted again; and a sender evicted from a full table gets a
fresh window.  Here freshness is a random value of the *receiver*, so a
restart (new random values) or an eviction (the state is gone) can only make
the receiver refuse more, never accept an old packet, and no wall clock or
data dir is involved.

Datagrams: cookie echo.  A receiver keeps, per sender, the boot it accepts,
the cookie that boot must echo and an RFC 6479 sliding window of sequences.
A datagram is accepted when it carries that boot and cookie and the window
takes its sequence.  Anything else is dropped: no cookie (first contact, or
the sender restarted) or a stale one (the receiver restarted, or forgot the
sender to make room).  The transport answers such a datagram, rate limited,
with a GRANT: the cookie for that sender boot, a keyed BLAKE2b of (receiver
secret, sender, boot, entry nonce), so granting stores nothing.  The first
datagram that echoes a granted cookie makes its boot current with a fresh
window and draws a new entry nonce, so no cookie granted earlier can switch
the entry again: a boot once replaced is never accepted again.  The secret
is random per process and the table is never written anywhere, so after a
receiver restart or an eviction no recorded packet carries a matching cookie.

The grant echoes the boot and sequence of the refused datagram, and names the
receiver's listen address.  The sender takes it only if that boot is its own
(a grant for an earlier run of ours is a replay), and only if the echoed
sequence is later than the one behind the cookie it holds for that address (a
recorded older grant cannot roll it back).  Datagrams it had to send with no
cookie at all it keeps for a moment and sends again, sealed with the cookie,
when the grant arrives: those were certainly refused, so the resend delivers
them once.  (One sealed with a cookie that proved stale is not resent: if an
attacker's replay had triggered the grant, a resend could deliver it twice.)
So a restarted or restored node is heard one round trip after its first
datagram, and a peer that restarted costs its correspondents one datagram.

Streams: a challenge per connection.  The accepting side writes one CHALLENGE
frame carrying 8 random bytes, its only frame on that connection; the
connecting side seals every frame of the connection with it as the cookie,
starting with its Hello.  The acceptor takes frames whose cookie is its
challenge, from one sender boot, with strictly growing sequences.  Frames
recorded from any other connection, before or after any restart, carry
another challenge.  It costs one round trip per new connection and keeps no
state per sender, so there is nothing to evict or to lose on a restart.

Relayed frames (issue 20): a reliable message to a peer whose direct path is
broken is sealed by its origin for its destination, on channel RELAY, and
carried over one relay as opaque bytes (``agent.runtime.relay``); the relay
cannot read or alter it unnoticed (an altered frame fails the tag at the
destination).  There is no connection to hold a challenge, so freshness works
as for datagrams, with a second :class:`ReplayFilter` of its own: the
destination grants a cookie per sender boot (channel RELAY_GRANT, sent back
over a relay), and takes each sequence once within a sliding window.  The
window, not a strictly growing sequence, is the point: frames of one origin
reach a destination over two relays, or over a relay and then again directly,
in any order, and none of them is a replay; the same frame delivered twice
is.  RELAY sequences are a channel of their own, so they never interleave
with a stream connection's strictly growing ones, and a STREAM or DATAGRAM
packet wrapped into a relay frame is refused by its channel.

Cost per packet: one header pack or unpack, two 8-byte compares and a window
update, as in version 1; a keyed hash only when a datagram is refused.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from agent.crypto import SEAL_OVERHEAD, Keyring, SealError, SealStats

_ENV = struct.Struct(">B8s8s8sQ")
ENVELOPE_HEADER_SIZE = _ENV.size
"""Bytes of the authenticated envelope header inside the ciphertext (33)."""
DATAGRAM_OVERHEAD = SEAL_OVERHEAD + ENVELOPE_HEADER_SIZE
"""Total bytes a sealed datagram adds to its payload (66)."""
BOOT_SIZE = 8
COOKIE_SIZE = 8
NO_COOKIE = bytes(COOKIE_SIZE)
"""The cookie of a datagram sent before the receiver granted one: always refused."""

REPLAY_WINDOW = 1024
"""Datagram sequences tracked behind the highest one seen, per sender."""
MAX_TRACKED_SENDERS = 4096
"""Senders whose datagram state is kept; the one granted first is forgotten
when full (it is granted a new cookie when it next sends: one lost datagram)."""

_H = ENVELOPE_HEADER_SIZE
assert _H == 33  # a literal in the hot paths below


class Channel(IntEnum):
    """What a sealed packet is (authenticated)."""

    DATAGRAM = 0
    """A UDP payload."""
    STREAM = 1
    """A TCP frame of payloads (a batch)."""
    GRANT = 2
    """UDP: a receiver's cookie for the sender of a datagram it refused."""
    CHALLENGE = 3
    """TCP: the accepting side's per-connection cookie, its only frame."""
    RELAY = 4
    """A payload sealed end to end for a destination reached over a relay."""
    RELAY_GRANT = 5
    """Over a relay: the destination's cookie for a RELAY sender it refused."""


class CookieNeeded(SealError):
    """An authentic datagram without this receiver's current cookie for its
    sender's boot: dropped; pass it to :meth:`Envelope.seal_grant` to answer."""

    def __init__(self, sender: bytes, boot: bytes, seq: int) -> None:
        super().__init__("cookie", f"seq {seq}")
        self.sender = sender
        self.boot = boot
        self.seq = seq


@dataclass(frozen=True, slots=True)
class Grant:
    """A receiver's answer to a datagram it refused: seal datagrams to it with
    ``cookie``.  ``echo_seq`` is the refused datagram's sequence."""

    cookie: bytes
    echo_seq: int
    listen_addr: str


def sender_digest(node_id: str) -> bytes:
    """The 8-byte sender tag carried in envelopes."""
    return hashlib.sha256(node_id.encode("utf-8")).digest()[:8]


# --------------------------------------------------------------------------- datagrams


class ReplayWindow:
    """Sliding window over one sender's sequence numbers (RFC 6479 style).

    Bit ``i`` of ``bitmap`` is set when ``top - i`` has been accepted."""

    __slots__ = ("_mask", "bitmap", "size", "top")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if size <= 0:
            raise ValueError(f"replay window size must be positive, got {size}")
        self.size = size
        self._mask = (1 << size) - 1
        self.top = 0
        self.bitmap = 0

    def accept(self, seq: int) -> bool:
        """Accept ``seq`` once: False for a duplicate or one too old."""
        top = self.top
        if seq > top:
            shift = seq - top
            self.bitmap = 1 if shift >= self.size else ((self.bitmap << shift) | 1) & self._mask
            self.top = seq
            return True
        behind = top - seq
        if behind >= self.size or seq <= 0:
            return False
        bit = 1 << behind
        if self.bitmap & bit:
            return False
        self.bitmap |= bit
        return True


class _Sender:
    __slots__ = ("boot", "cookie", "nonce", "window")

    def __init__(self, size: int) -> None:
        self.boot = b""  # no boot accepted yet: matches no header
        self.cookie = NO_COOKIE
        self.nonce = os.urandom(8)
        self.window = ReplayWindow(size)


class ReplayFilter:
    """A receiver's datagram state for every sender (see "Datagrams" above).

    Bounded to ``max_senders``: when full, the sender granted first is
    forgotten (no per-packet LRU bookkeeping on the hot path).  Only key
    holders' packets reach it, and a LAN cluster has far fewer members than
    the bound, so eviction is a backstop; it is safe because a forgotten
    sender's cookies match nothing any more."""

    __slots__ = ("_secret", "_senders", "max_senders", "window")

    def __init__(self, window: int = REPLAY_WINDOW, max_senders: int = MAX_TRACKED_SENDERS) -> None:
        self.window = window
        self.max_senders = max_senders
        self._secret = os.urandom(32)
        self._senders: dict[bytes, _Sender] = {}

    def accept(self, sender: bytes, boot: bytes, cookie: bytes, seq: int) -> bool | None:
        """True: fresh.  False: a replay within the current session.  None: no
        valid cookie for this sender boot (answer with :meth:`grant`)."""
        state = self._senders.get(sender)
        if state is None:
            return None
        if cookie == state.cookie and boot == state.boot:
            return state.window.accept(seq)
        if cookie != NO_COOKIE and cookie == self._cookie(sender, boot, state.nonce):
            # This boot echoes a cookie granted since the entry last switched:
            # it becomes current, and every earlier grant stops matching.
            state.boot = boot
            state.cookie = cookie
            state.nonce = os.urandom(8)
            state.window = ReplayWindow(self.window)
            return state.window.accept(seq)
        return None

    def grant(self, sender: bytes, boot: bytes) -> bytes:
        """The cookie ``boot`` of ``sender`` must echo to be accepted."""
        state = self._senders.get(sender)
        if state is None:
            if len(self._senders) >= self.max_senders:
                del self._senders[next(iter(self._senders))]
            state = self._senders[sender] = _Sender(self.window)
        return self._cookie(sender, boot, state.nonce)

    def _cookie(self, sender: bytes, boot: bytes, nonce: bytes) -> bytes:
        cookie = hashlib.blake2b(sender + boot + nonce, digest_size=COOKIE_SIZE,
                                 key=self._secret).digest()
        return cookie if cookie != NO_COOKIE else b"\x00" * (COOKIE_SIZE - 1) + b"\x01"

    def __len__(self) -> int:
        return len(self._senders)


# --------------------------------------------------------------------------- streams


class StreamGate:
    """Freshness state of one accepted stream connection (see "Streams" above)."""

    __slots__ = ("boot", "challenge", "sender", "seq")

    def __init__(self, challenge: bytes | None = None) -> None:
        self.challenge = challenge if challenge is not None else os.urandom(COOKIE_SIZE)
        self.sender = b""  # set by the first frame (the Hello)
        self.boot = b""
        self.seq = 0


# --------------------------------------------------------------------------- envelope


class Envelope:
    """This node's sealing identity (sender tag, boot id, sequences) plus the
    datagram replay state for everyone else.  Nothing here reads a clock."""

    __slots__ = ("_sender", "boot", "keyring", "relay_replay", "replay", "sequences", "stats")

    def __init__(
        self,
        keyring: Keyring,
        sender_id: str,
        *,
        boot: bytes | None = None,
        stats: SealStats | None = None,
        window: int = REPLAY_WINDOW,
        max_senders: int = MAX_TRACKED_SENDERS,
    ) -> None:
        self.keyring = keyring
        self.boot = boot if boot is not None else os.urandom(BOOT_SIZE)
        if len(self.boot) != BOOT_SIZE:
            raise ValueError(f"a boot id is {BOOT_SIZE} bytes")
        self.stats = stats if stats is not None else SealStats()
        self._sender = sender_digest(sender_id)
        self.sequences = [0] * len(Channel)
        """The last sequence sealed, per channel."""
        self.replay = ReplayFilter(window, max_senders)
        self.relay_replay = ReplayFilter(window, max_senders)
        """RELAY freshness per sender (its own cookies and windows)."""

    @property
    def sender(self) -> bytes:
        return self._sender

    # -- sealing ---------------------------------------------------------------

    def seal(self, channel: Channel, payload: bytes, cookie: bytes = NO_COOKIE) -> bytes:
        """Seal ``payload`` for ``channel`` echoing the receiver's ``cookie``."""
        seq = self.sequences[channel] + 1
        self.sequences[channel] = seq
        self.stats.sealed += 1
        return self.keyring.seal(_ENV.pack(channel, self._sender, self.boot, cookie, seq) + payload)

    def seal_grant(self, refused: CookieNeeded, listen_addr: str) -> bytes:
        """The GRANT answering a refused datagram (its sender, boot and sequence)."""
        cookie = self.replay.grant(refused.sender, refused.boot)
        self.stats.sealed += 1
        header = _ENV.pack(Channel.GRANT, self._sender, self.boot, cookie, refused.seq)
        return self.keyring.seal(header + refused.boot + listen_addr.encode("utf-8"))

    def seal_relay_grant(self, refused: CookieNeeded, node_id: str) -> bytes:
        """The RELAY_GRANT answering a refused RELAY frame; names our ``node_id``."""
        cookie = self.relay_replay.grant(refused.sender, refused.boot)
        self.stats.sealed += 1
        header = _ENV.pack(Channel.RELAY_GRANT, self._sender, self.boot, cookie, refused.seq)
        return self.keyring.seal(header + refused.boot + node_id.encode("utf-8"))

    def seal_challenge(self, gate: StreamGate) -> bytes:
        """The CHALLENGE frame an accepted connection starts with."""
        return self.seal(Channel.CHALLENGE, b"", gate.challenge)

    # -- opening ---------------------------------------------------------------

    def open_datagram(self, packet: bytes) -> bytes | Grant:
        """The payload of a fresh datagram, or a :class:`Grant` addressed to this
        boot.  Raises ``CookieNeeded`` (answer it) or another ``SealError``;
        every refusal is counted."""
        opened = self._open_fresh(packet, Channel.DATAGRAM, Channel.GRANT, self.replay)
        return opened if isinstance(opened, Grant) else opened[1]

    def _grant_from(self, plain: bytes, cookie: bytes, echo_seq: int) -> Grant:
        if len(plain) < _H + BOOT_SIZE or cookie == NO_COOKIE:
            raise SealError("malformed", "short grant")
        if plain[_H : _H + BOOT_SIZE] != self.boot:
            raise SealError("replay", "grant for an earlier run of this node")
        try:
            listen_addr = plain[_H + BOOT_SIZE :].decode("utf-8")
        except UnicodeDecodeError:
            raise SealError("malformed", "grant address is not UTF-8") from None
        return Grant(cookie, echo_seq, listen_addr)

    def open_relay(self, packet: bytes) -> tuple[bytes, bytes] | Grant:
        """A relayed packet addressed to us: ``(sender tag, payload)`` of a fresh
        RELAY frame, or the :class:`Grant` of a RELAY_GRANT (``listen_addr`` is
        then the granting node's id).  Raises ``CookieNeeded`` (answer it with
        :meth:`seal_relay_grant`) or another ``SealError``; every refusal is counted."""
        return self._open_fresh(packet, Channel.RELAY, Channel.RELAY_GRANT, self.relay_replay)

    def _open_fresh(
        self, packet: bytes, data: Channel, grant: Channel, replay: ReplayFilter
    ) -> tuple[bytes, bytes] | Grant:
        """One opening rule for the direct and the relayed socket: a fresh frame on
        ``data`` gives ``(sender tag, payload)``, a ``grant`` frame its Grant; the
        two sockets differ only in their channels and their replay windows."""
        stats = self.stats
        try:
            plain = self.keyring.open(packet)
            if len(plain) < _H:
                raise SealError("malformed", "no envelope header")
            channel, sender, boot, cookie, seq = _ENV.unpack_from(plain)
            if channel == data:
                fresh = replay.accept(sender, boot, cookie, seq)
                if fresh:
                    stats.opened += 1
                    return bytes(sender), plain[_H:]
                if fresh is None:
                    raise CookieNeeded(sender, boot, seq)
                raise SealError("replay", f"seq {seq}")
            if channel == grant:
                opened = self._grant_from(plain, cookie, seq)
                stats.opened += 1
                return opened
            raise SealError("malformed", f"channel {channel} on the {data.name.lower()} socket")
        except SealError as exc:
            stats.count(exc.reason)
            raise

    def open_challenge(self, packet: bytes) -> bytes:
        """The cookie a CHALLENGE frame carries; ``SealError`` if it is not one."""
        try:
            plain = self.keyring.open(packet)
            if len(plain) < _H:
                raise SealError("malformed", "no envelope header")
            channel, _sender, _boot, cookie, _seq = _ENV.unpack_from(plain)
            if channel != Channel.CHALLENGE or cookie == NO_COOKIE:
                raise SealError("malformed", f"expected a challenge, got channel {channel}")
        except SealError as exc:
            self.stats.count(exc.reason)
            raise
        return bytes(cookie)

    def open_stream(self, packet: bytes, gate: StreamGate) -> bytes:
        """The payload of a frame read on the connection ``gate`` guards."""
        try:
            plain = self.keyring.open(packet)
            if len(plain) < 33:  # _H
                raise SealError("malformed", "no envelope header")
            channel, sender, boot, cookie, seq = _ENV.unpack_from(plain)
            if channel != 1:  # Channel.STREAM
                raise SealError("malformed", f"sealed for channel {channel}")
            if cookie != gate.challenge:
                raise SealError("replay", "sealed for another connection")
            if seq <= gate.seq:
                raise SealError("replay", f"seq {seq}")
            if gate.seq == 0:
                gate.sender = sender
                gate.boot = boot
            elif sender != gate.sender or boot != gate.boot:
                raise SealError("malformed", "sender changed within a connection")
            gate.seq = seq
        except SealError as exc:
            self.stats.count(exc.reason)
            raise
        self.stats.opened += 1
        return plain[33:]
