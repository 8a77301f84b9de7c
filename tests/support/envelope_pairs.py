"""Test helpers: envelopes that have done the cookie handshake (agent.envelope)."""

from __future__ import annotations

import pytest

from agent.crypto import Keyring
from agent.envelope import Channel, CookieNeeded, Envelope, Grant

KEY_A = bytes(range(32))


def handshake(sender: Envelope, receiver: Envelope, listen_addr: str = "127.0.0.1:1") -> bytes:
    """The cookie ``receiver`` grants ``sender`` (what the transport does when a
    datagram is refused): a cookieless datagram, refused, answered, taken."""
    with pytest.raises(CookieNeeded) as refused:
        receiver.open_datagram(sender.seal(Channel.DATAGRAM, b"hello?"))
    grant = sender.open_datagram(receiver.seal_grant(refused.value, listen_addr))
    assert isinstance(grant, Grant)
    return grant.cookie


def pair(key: bytes = KEY_A) -> tuple[Envelope, Envelope, bytes]:
    """alice, bob, and the cookie bob granted alice."""
    alice, bob = Envelope(Keyring.from_key(key), "alice"), Envelope(Keyring.from_key(key), "bob")
    return alice, bob, handshake(alice, bob)
