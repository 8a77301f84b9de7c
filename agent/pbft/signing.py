"""Signatures for PBFT: what is signed, who signs, who checks.

Theory of operation
-------------------
Every PBFT message is signed by its sender over ``payload(msg)``: a canonical,
self-delimiting encoding of the message's type and every field but ``sig``
(a ``PrePrepare``'s requests are left out: its ``digest`` binds them, and
``check_batch`` verifies the binding).  The encoding is defined here rather
than borrowed from msgpack so the core stays free of serialisation libraries
and two implementations cannot disagree on map order or integer widths.

``Signer`` and ``Verifier`` are the interface the core sees.  Two
implementations:

* ``Ed25519Signer`` / ``Ed25519Verifier`` (``cryptography``): the real thing,
  one key pair per node (``agent/identity_key.py`` keeps it in the data dir).
* ``KeyedHashSigner`` / ``KeyedHashVerifier``: a stand-in for simulations.
  Each node holds a secret; a signature is a keyed BLAKE2b of the payload.  The
  verifier knows every secret, a (simulated) Byzantine node only its own, so
  it can sign as itself but cannot forge another's signature -- the semantics
  that matter to the protocol, at a hundredth of the cost.

``CheckedVerifier`` wraps either with a bounded cache of signatures already
checked (certificates repeat the same signed messages many times).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.pbft.messages import PrePrepare, Request

SIG_CACHE = 8192
"""Signatures remembered as valid by ``CheckedVerifier`` (FIFO)."""


# ---------------------------------------------------------------- canonical bytes


def canonical(value: Any) -> bytes:
    """A self-delimiting, type-tagged encoding of wire values (see the module doc)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is bytes:
        out.append(b"b%d:" % len(value))
        out.append(value)
    elif kind is int:
        out.append(b"i%d;" % value)
    elif kind is str:
        data = value.encode()
        out.append(b"s%d:" % len(data))
        out.append(data)
    elif kind is tuple:
        out.append(b"(%d:" % len(value))
        for item in value:
            _encode(item, out)
        out.append(b")")
    elif value is None:
        out.append(b"N")
    elif kind is bool:
        out.append(b"T" if value else b"F")
    elif dataclasses.is_dataclass(value):
        _encode_fields(value, (), out)
    elif isinstance(value, int):  # an IntEnum
        out.append(b"i%d;" % value)
    else:
        raise TypeError(f"cannot sign a {kind.__name__}")


_SHAPES: dict[tuple[type, tuple[str, ...]], tuple[bytes, tuple[str, ...]]] = {}
"""Per dataclass and skipped fields: its name header and the fields encoded."""


def _encode_fields(value: Any, skip: tuple[str, ...], out: list[bytes]) -> None:
    shape = _SHAPES.get((type(value), skip))
    if shape is None:
        tag = type(value).__name__.encode()
        names = tuple(f.name for f in dataclasses.fields(value) if f.name not in skip)
        shape = _SHAPES[(type(value), skip)] = (b"{%d:%s" % (len(tag), tag), names)
    out.append(shape[0])
    for field_name in shape[1]:
        _encode(getattr(value, field_name), out)
    out.append(b"}")


def payload(msg: Any) -> bytes:
    """The bytes ``msg``'s sender signs: its type and fields, without ``sig``."""
    skip = ("sig", "requests") if isinstance(msg, PrePrepare) else ("sig",)
    out: list[bytes] = [b"pbft1"]
    _encode_fields(msg, skip, out)
    return b"".join(out)


def signer_of(msg: Any) -> str:
    """Who must have signed ``msg``: the client of a request, else ``frm``."""
    return str(msg.client if isinstance(msg, Request) else msg.frm)


def request_digest(request: Request) -> bytes:
    return hashlib.sha256(payload(request)).digest()


def batch_digest(requests: tuple[Request, ...]) -> bytes:
    """What a pre-prepare's ``digest`` must be: binds the requests and their order."""
    h = hashlib.sha256(b"batch")
    for request in requests:
        h.update(request_digest(request))
    return h.digest()


GROUP_MAGIC = b"\x00pbft.group\x00"
"""Prefix of a checkpoint snapshot that names its replica group (``reconfig.wrap_snapshot``)."""


def state_digest(snapshot: bytes) -> bytes:
    """What CHECKPOINTs sign for a state.  A snapshot headed by its group
    (``GROUP_MAGIC head \\n app``) hashes the header with the application part's
    hash, so a replacement's switch can be proven without the application state
    (``messages.GroupLink``); any other snapshot is hashed whole."""
    if snapshot.startswith(GROUP_MAGIC):
        head, sep, app = snapshot[len(GROUP_MAGIC) :].partition(b"\n")
        if sep:
            return headed_digest(head, hashlib.sha256(app).digest())
    return hashlib.sha256(snapshot).digest()


def headed_digest(head: bytes, app_digest: bytes) -> bytes:
    return hashlib.sha256(GROUP_MAGIC + head + b"\n" + app_digest).digest()


# ---------------------------------------------------------------- interfaces


class Signer(Protocol):
    """Signs as one node."""

    @property
    def node_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks any node's signature; False for an unknown node or a bad signature."""

    def verify(self, node_id: str, data: bytes, sig: bytes) -> bool: ...


_M = TypeVar("_M")


def sign(signer: Signer, msg: _M) -> _M:
    """``msg`` with its ``sig`` set (the signer must be its sender)."""
    assert signer_of(msg) == signer.node_id, "a node signs only as itself"
    return dataclasses.replace(msg, sig=signer.sign(payload(msg)))  # type: ignore[type-var]


class CheckedVerifier:
    """A ``Verifier`` with a cache of signatures already found valid."""

    def __init__(self, verifier: Verifier, cache: int = SIG_CACHE) -> None:
        self._verifier = verifier
        self._cache: OrderedDict[Any, None] = OrderedDict()
        """Messages found validly signed (frozen, so equal means identical)."""
        self._size = cache
        self.rejected = 0
        """Messages whose signature did not verify (forged, or from an unknown key)."""

    def check(self, msg: Any) -> bool:
        """Is ``msg`` signed by its sender?  Requests inside a pre-prepare are
        checked too (``check_batch``)."""
        if msg in self._cache:
            return True
        if not msg.sig or not self._verifier.verify(signer_of(msg), payload(msg), msg.sig):
            self.rejected += 1
            return False
        self._cache[msg] = None
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return True

    def check_batch(self, pp: PrePrepare) -> bool:
        """The pre-prepare's digest matches its requests, each signed by its client."""
        if batch_digest(pp.requests) != pp.digest:
            self.rejected += 1
            return False
        return all(self.check(r) for r in pp.requests)


# ---------------------------------------------------------------- Ed25519


class Ed25519Signer:
    """Signs with a node's Ed25519 private key (RFC 8032; deterministic)."""

    def __init__(self, node_id: str, private_key: Ed25519PrivateKey) -> None:
        self._node_id = node_id
        self._key = private_key

    @property
    def node_id(self) -> str:
        return self._node_id

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


class Ed25519Verifier:
    """Knows the public keys (32 raw bytes) of the nodes it accepts."""

    def __init__(self, keys: dict[str, bytes] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for node_id, raw in (keys or {}).items():
            self.add(node_id, raw)

    def add(self, node_id: str, raw: bytes) -> None:
        self._keys[node_id] = Ed25519PublicKey.from_public_bytes(raw)

    def known(self, node_id: str) -> bool:
        return node_id in self._keys

    def verify(self, node_id: str, data: bytes, sig: bytes) -> bool:
        key = self._keys.get(node_id)
        if key is None or len(sig) != 64:
            return False
        try:
            key.verify(sig, data)
        except InvalidSignature:
            return False
        return True


# ---------------------------------------------------------------- simulation stand-in


class KeyedHashSigner:
    """Simulations only: a keyed BLAKE2b "signature" (see the module doc)."""

    def __init__(self, node_id: str, secret: bytes) -> None:
        self._node_id = node_id
        self._secret = secret

    @property
    def node_id(self) -> str:
        return self._node_id

    def sign(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._secret, digest_size=32).digest()


class KeyedHashVerifier:
    """Simulations only: knows every node's secret."""

    def __init__(self, secrets: dict[str, bytes]) -> None:
        self._secrets = dict(secrets)

    def verify(self, node_id: str, data: bytes, sig: bytes) -> bool:
        secret = self._secrets.get(node_id)
        if secret is None:
            return False
        return hashlib.blake2b(data, key=secret, digest_size=32).digest() == sig
