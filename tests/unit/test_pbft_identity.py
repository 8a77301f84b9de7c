"""Node identity keys: 0600 on disk, ids derived from the public key, Raft ids kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.config import load_or_create_node_id
from agent.errors import ConfigError
from agent.identity_key import (
    KEY_FILE,
    fingerprint,
    id_matches_key,
    key_node_id,
    load_or_create_key,
    pbft_node_id,
)
from agent.pbft.signing import Ed25519Signer, Ed25519Verifier


def test_the_key_is_made_once_private_and_stable(tmp_path: Path) -> None:
    key = load_or_create_key(str(tmp_path))
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_key(str(tmp_path))
    assert again.public == key.public and len(key.public) == 32
    assert key.fingerprint.startswith("SHA256:") and key.fingerprint == fingerprint(key.public)


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    load_or_create_key(str(tmp_path))
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(str(tmp_path))


def test_a_pbft_id_is_derived_from_the_key_and_cannot_be_claimed(tmp_path: Path) -> None:
    key = load_or_create_key(str(tmp_path))
    node_id = pbft_node_id(str(tmp_path), key)
    assert node_id == key_node_id(key.public) and len(node_id) == 32
    assert (tmp_path / "node_id").read_text().strip() == node_id
    assert pbft_node_id(str(tmp_path), key) == node_id
    other = load_or_create_key(str(tmp_path / "other"))
    assert id_matches_key(node_id, key.public)
    assert not id_matches_key(node_id, other.public)


def test_a_raft_data_dir_keeps_its_id_and_is_refused_for_pbft(tmp_path: Path) -> None:
    raft_id = load_or_create_node_id(str(tmp_path))
    key = load_or_create_key(str(tmp_path))
    assert load_or_create_node_id(str(tmp_path)) == raft_id
    with pytest.raises(ConfigError, match="new data dir"):
        pbft_node_id(str(tmp_path), key)


def test_the_key_signs_what_its_public_half_verifies(tmp_path: Path) -> None:
    key = load_or_create_key(str(tmp_path))
    signer = Ed25519Signer(key.derived_id, key.private)
    verifier = Ed25519Verifier({key.derived_id: key.public})
    sig = signer.sign(b"hello")
    assert verifier.verify(key.derived_id, b"hello", sig)
    assert not verifier.verify(key.derived_id, b"hellp", sig)
    assert not verifier.verify("someone-else", b"hello", sig)
