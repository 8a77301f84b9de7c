"""Each node's Ed25519 identity key, and node ids derived from it.

Membership is authenticated by the shared cluster key only, so any member
could announce a public key in another node's name.  PBFT signs every message
with the node's own key; for that to mean anything, a key must not be
claimable for someone else's id.  So a PBFT node's id *is* its key: the first
16 bytes of SHA-256 of the raw public key, in hex (the same 32-character
shape as the random ids Raft data dirs keep).  A peer checks
``id_matches_key(node_id, public)`` before it believes a key.

The key pair is made at first start and kept in ``<data_dir>/node_key``: the
32-byte private seed, base64, one line, born 0600 (``agent/keyfile.py``: a key
file any other user can read is refused).  Existing Raft data dirs keep the
ids they have (their key only gives a fingerprint for ``meshtui status``); a
PBFT cluster needs a data dir whose id is key-derived, and a data dir holding
another id is refused with one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.durable import replace_file
from agent.errors import ConfigError
from agent.keyfile import read_key_text, write_key_file

KEY_FILE = "node_key"
"""The identity key's file name inside the data dir."""
NODE_ID_FILE = "node_id"


@dataclass(frozen=True, slots=True)
class NodeKey:
    private: Ed25519PrivateKey
    public: bytes
    """The raw 32-byte public key."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    @property
    def derived_id(self) -> str:
        return key_node_id(self.public)


def key_node_id(public: bytes) -> str:
    """The node id a public key owns: SHA-256's first 16 bytes, hex."""
    return hashlib.sha256(public).digest()[:16].hex()


def id_matches_key(node_id: str, public: bytes) -> bool:
    return len(public) == 32 and node_id == key_node_id(public)


def fingerprint(public: bytes) -> str:
    """As ssh prints keys: ``SHA256:`` and the unpadded base64 of the hash."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode().rstrip("=")


def _public_bytes(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_or_create_key(data_dir: str) -> NodeKey:
    """The node's key pair, made (0600, synced) on first use."""
    path = Path(data_dir) / KEY_FILE
    field = "data_dir"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = os.urandom(32)
        write_key_file(path, base64.b64encode(seed).decode(), field=field)
    text = read_key_text(path, field=field).strip()
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(field, f"{path} is not a base64 Ed25519 key") from None
    if len(seed) != 32:
        raise ConfigError(field, f"{path} holds {len(seed)} bytes, an Ed25519 key has 32")
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return NodeKey(private, _public_bytes(private))


def pbft_node_id(data_dir: str, key: NodeKey) -> str:
    """The id of a PBFT node: key-derived, written to ``node_id`` on first start;
    a data dir that already holds another id (a Raft node's) is refused."""
    path = Path(data_dir) / NODE_ID_FILE
    want = key.derived_id
    try:
        held = path.read_text().strip()
    except FileNotFoundError:
        held = ""
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot read {path}: {exc.strerror}") from None
    if held and held != want:
        raise ConfigError(
            "data_dir",
            f"{data_dir} holds node id {held[:12]}..., not the one its key derives "
            f"({want[:12]}...): a PBFT cluster needs key-derived ids, start it on a new data dir",
        )
    if not held:
        try:
            replace_file(path, (want + "\n").encode(), mode=0o644)
        except OSError as exc:
            raise ConfigError("data_dir", f"cannot write {path}: {exc.strerror}") from None
    return want
