"""Cluster keyring and sealing: AES-256-GCM, key rotation.

Theory of operation
-------------------
Every peer packet (UDP datagram or TCP frame body) is sealed::

    version (1) | key id (4) | nonce (12) | ciphertext | tag (16)

The header ``version | key id`` is the AEAD's associated data, so it cannot be
altered either.  The key id is the first 4 bytes of SHA-256 of the key: it
names a key without revealing anything usable about it.  Every installed key
opens packets; only the primary seals.  Rotation is install (everywhere) ->
use (everywhere) -> remove (everywhere), and no packet is lost in between.

Nonces.  AES-GCM is broken if a (key, nonce) pair ever repeats, and every
node of the cluster shares the key.  A nonce is a 4-byte random per-process
prefix followed by an 8-byte counter that starts at a random value and is
incremented on every seal.  Within a process the counter never repeats (2**64
seals), so no nonce repeats under any key.  Across processes sharing a key,
two nonce streams collide only if their random 96-bit starting points land
within the number of packets either sends: for N process starts sealing m
packets each the probability is about N**2 * m / 2**96, e.g. 10,000 starts
of 2**36 packets each (40 days at 20k packets/s) gives about 2**-33.  A fresh
random nonce per packet would give a similar bound but cost a urandom call
per seal, and the counter also keeps one process from ever repeating itself.

Version.  The version byte names the whole format, the envelope inside the
ciphertext included (:mod:`agent.envelope`: sender, boot id, cookie,
sequence; replay protection).  Version 2 replaced version 1's sender-chosen
incarnation with receiver cookies; a version 1 packet (an older release) is
refused with reason ``version``: it cannot be checked for replays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import AuthError, ConfigError
from agent.keyfile import read_key_text

SEAL_VERSION = 2
KEY_SIZE = 32
KEY_ID_SIZE = 4
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_SIZE = 1 + KEY_ID_SIZE
SEAL_OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
"""Bytes sealing adds around a plaintext (33)."""

_MASK64 = (1 << 64) - 1
assert (SEAL_VERSION, HEADER_SIZE, SEAL_OVERHEAD) == (2, 5, 33)  # literals in Keyring.open
# First bytes of a msgpack array/map: what an unsealed wire message starts with.
_PLAINTEXT_MARKERS = frozenset([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])


class SealError(AuthError):
    """A packet was refused.  ``reason`` is one of: short, version, plaintext,
    unknown_key, tag, malformed, replay, cookie (a datagram without the
    receiver's current cookie: see :mod:`agent.envelope`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"sealed packet refused: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


@dataclass(slots=True)
class SealStats:
    """Counters of the sealing layer (mutable, read by ``meshtui report``)."""

    sealed: int = 0
    opened: int = 0
    dropped_tag: int = 0
    dropped_unknown_key: int = 0
    dropped_replay: int = 0
    dropped_malformed: int = 0
    dropped_plaintext: int = 0
    dropped_cookie: int = 0
    """Authentic datagrams without the current cookie (first contact, a restart
    on either side, or a replay): answered with a grant, not delivered."""

    def count(self, reason: str) -> None:
        """Count one drop for ``reason`` (a ``SealError.reason``)."""
        if reason == "tag":
            self.dropped_tag += 1
        elif reason == "unknown_key":
            self.dropped_unknown_key += 1
        elif reason == "replay":
            self.dropped_replay += 1
        elif reason == "plaintext":
            self.dropped_plaintext += 1
        elif reason == "cookie":
            self.dropped_cookie += 1
        else:
            self.dropped_malformed += 1


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One installed key as shown to operators (never the key itself)."""

    key_id: str
    primary: bool


# --------------------------------------------------------------------------- keys


def generate_key() -> str:
    """A new random cluster key in its textual (base64) form."""
    return encode_key(os.urandom(KEY_SIZE))


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str, field: str = "key") -> bytes:
    """Textual key -> 32 bytes; ``ConfigError(field, ...)`` if it is not one."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(field, f"not valid base64 ({exc})") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(field, f"key is {len(key)} bytes, need {KEY_SIZE}")
    return key


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read a key file written by ``mesh-agent keygen -o``; one group or others
    may access is refused (agent/keyfile.py).  Every error names the file."""
    text = read_key_text(path, field="key_file")
    try:
        return decode_key(text, field="key_file")
    except ConfigError as exc:
        raise ConfigError("key_file", f"{os.fspath(path)}: {exc.reason}") from None


KEYRING_DIR = "keyring"
"""Directory beside the key file whose ``*.key`` files are installed, not primary."""


def load_keyring(key_file: str | os.PathLike[str]) -> Keyring:
    """The primary key from ``key_file`` plus every ``keyring/*.key`` beside it.

    ``meshtui keys install -i`` writes each rotated-in key there (and ``use``
    keeps the old primary there until ``remove``), so an agent restarted in the
    middle of a rotation still opens what its peers seal.  An unreadable or
    malformed file, or one group or others may access, refuses the start, naming it.
    """
    primary = load_key_file(key_file)
    ring = Path(key_file).parent / KEYRING_DIR
    extra: list[bytes] = []
    if ring.is_dir():
        for path in sorted(ring.glob("*.key")):
            extra.append(load_key_file(path))  # its errors name the file
    try:
        return Keyring(extra, primary)
    except ConfigError as exc:
        raise ConfigError("key_file", f"{ring}: {exc.reason}") from None


def key_id(key: bytes) -> bytes:
    """First 4 bytes of SHA-256 of the key."""
    return hashlib.sha256(key).digest()[:KEY_ID_SIZE]


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise ConfigError("key", f"a cluster key is {KEY_SIZE} bytes")
    return bytes(key)


def _parse_key_id(kid: str | bytes) -> bytes:
    if isinstance(kid, bytes):
        raw = kid
    else:
        try:
            raw = bytes.fromhex(kid)
        except ValueError:
            raise ConfigError("key_id", f"{kid!r} is not hex") from None
    if len(raw) != KEY_ID_SIZE:
        raise ConfigError("key_id", f"a key id is {KEY_ID_SIZE} bytes ({2 * KEY_ID_SIZE} hex)")
    return raw


class Keyring:
    """Installed keys; the primary seals, every key opens."""

    __slots__ = ("_aeads", "_counter", "_keys", "_prefix", "_primary", "_primary_aead",
                 "_primary_header")

    def __init__(self, keys: Sequence[bytes], primary: bytes) -> None:
        self._keys: dict[bytes, bytes] = {}
        self._aeads: dict[bytes, AESGCM] = {}
        for key in [*keys, primary]:
            self.install(key)
        self._prefix = os.urandom(4)
        self._counter = int.from_bytes(os.urandom(8), "big")
        self._primary = key_id(primary)
        self._primary_aead = self._aeads[self._primary]
        self._primary_header = bytes([SEAL_VERSION]) + self._primary

    @classmethod
    def from_key(cls, key: bytes) -> Keyring:
        return cls([key], key)

    # -- sealing -----------------------------------------------------------

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` with the primary key."""
        self._counter = (self._counter + 1) & _MASK64
        nonce = self._prefix + self._counter.to_bytes(8, "big")
        header = self._primary_header
        return header + nonce + self._primary_aead.encrypt(nonce, plaintext, header)

    def open(self, packet: bytes) -> bytes:
        """Verify and decrypt a sealed packet; ``SealError`` says why not."""
        if type(packet) is not bytes:
            packet = bytes(packet)
        if len(packet) < 33:  # SEAL_OVERHEAD; literals: this is the hot path
            raise SealError("short", f"{len(packet)} bytes")
        if packet[0] != 2:  # SEAL_VERSION
            if packet[0] in _PLAINTEXT_MARKERS:
                raise SealError("plaintext")
            if packet[0] == 1:
                raise SealError("version", "seal version 1: the peer runs an older release")
            raise SealError("version", f"seal version {packet[0]}")
        aead = self._aeads.get(packet[1:5])
        if aead is None:
            raise SealError("unknown_key", packet[1:5].hex())
        try:
            return aead.decrypt(packet[5:17], packet[17:], packet[:5])
        except InvalidTag:
            raise SealError("tag") from None

    # -- rotation ----------------------------------------------------------

    def install(self, key: bytes) -> str:
        """Add a key (opens packets from now on); returns its id in hex."""
        key = _check_key(key)
        kid = key_id(key)
        existing = self._keys.get(kid)
        if existing is not None and existing != key:
            raise ConfigError("key", f"a different key with id {kid.hex()} is installed")
        if existing is None:
            self._keys[kid] = key
            self._aeads[kid] = AESGCM(key)
        return kid.hex()

    def use(self, kid: str | bytes) -> None:
        """Make an installed key the primary (it seals from now on)."""
        raw = _parse_key_id(kid)
        if raw not in self._aeads:
            raise ConfigError("key_id", f"key {raw.hex()} is not installed")
        self._primary = raw
        self._primary_aead = self._aeads[raw]
        self._primary_header = bytes([SEAL_VERSION]) + raw

    def remove(self, kid: str | bytes) -> None:
        """Forget a key; packets sealed with it are dropped from now on."""
        raw = _parse_key_id(kid)
        if raw == self._primary:
            raise ConfigError("key_id", "cannot remove the primary key; use another first")
        if raw not in self._keys:
            raise ConfigError("key_id", f"key {raw.hex()} is not installed")
        del self._keys[raw]
        del self._aeads[raw]

    def list(self) -> list[KeyInfo]:
        return [KeyInfo(kid.hex(), kid == self._primary) for kid in self._keys]

    @property
    def primary_id(self) -> str:
        return self._primary.hex()
