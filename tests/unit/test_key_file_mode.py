"""Key files others may access are refused, as ssh refuses private keys; ours are born 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import crypto
from agent.errors import ConfigError
from agent.keyfile import read_key_text, write_key_file

KEY = crypto.generate_key()


def key_at(path: Path, mode: int, text: str = KEY) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("mode", "access"),
    [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "writable"),
     (0o602, "writable"), (0o610, "accessible")],
)
def test_group_or_other_access_is_refused_with_the_fix(
    tmp_path: Path, mode: int, access: str
) -> None:
    path = key_at(tmp_path / "cluster.key", mode)
    with pytest.raises(ConfigError) as info:
        crypto.load_key_file(path)
    assert info.value.field == "key_file"
    assert str(info.value) == (
        f"key_file: key file {path} is {access} by group or others (mode {mode:04o}); "
        f"run: chmod 600 {path}"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = key_at(tmp_path / "cluster.key", mode)
    assert crypto.load_key_file(path) == crypto.decode_key(KEY)


def test_the_mode_checked_is_the_file_read_through_a_symlink(tmp_path: Path) -> None:
    target = key_at(tmp_path / "real.key", 0o644)
    link = tmp_path / "cluster.key"
    link.symlink_to(target)  # a symlink's own mode (0777) means nothing
    with pytest.raises(ConfigError, match=r"\(mode 0644\)"):
        crypto.load_key_file(link)
    os.chmod(target, 0o600)
    assert crypto.load_key_file(link) == crypto.decode_key(KEY)


def test_a_readable_keyring_file_refuses_the_keyring_naming_it(tmp_path: Path) -> None:
    key_at(tmp_path / "cluster.key", 0o600)
    (tmp_path / "keyring").mkdir()
    other = crypto.generate_key()
    ring_file = key_at(tmp_path / "keyring" / "a1b2c3d4.key", 0o644, other)
    with pytest.raises(ConfigError) as info:
        crypto.load_keyring(tmp_path / "cluster.key")
    assert str(info.value) == (
        f"key_file: key file {ring_file} is readable by group or others (mode 0644); "
        f"run: chmod 600 {ring_file}"
    )
    os.chmod(ring_file, 0o600)
    assert len(crypto.load_keyring(tmp_path / "cluster.key").list()) == 2


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_key_text(tmp_path)


def test_write_key_file_is_born_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    old_umask = os.umask(0)  # the mode must not depend on the caller's umask
    try:
        write_key_file(path, KEY)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == KEY + "\n"
    with pytest.raises(ConfigError, match="already exists; not overwriting"):
        write_key_file(path, crypto.generate_key())
    assert path.read_text() == KEY + "\n"


def test_write_key_file_overwrite_replaces_a_readable_file_with_a_private_one(
    tmp_path: Path,
) -> None:
    path = key_at(tmp_path / "cluster.key", 0o644, crypto.generate_key())
    write_key_file(path, KEY, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.load_key_file(path) == crypto.decode_key(KEY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.key"]  # no temp left


def mesh_agent(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: os.umask(umask),  # only sets the umask: safe before exec
    )


def test_keygen_o_writes_a_0600_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    made = mesh_agent("keygen", "-o", str(path), umask=0)
    assert made.returncode == 0 and made.stdout == "" and made.stderr == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert len(crypto.load_key_file(path)) == 32
    again = mesh_agent("keygen", "-o", str(path))
    assert again.returncode == 2
    assert again.stderr.splitlines() == [
        f"mesh-agent: keygen: {path} already exists; not overwriting a key file"
    ]
    assert path.read_text() == first
    printed = mesh_agent("keygen")  # without -o: printed, as before
    assert printed.returncode == 0 and len(crypto.decode_key(printed.stdout)) == 32


def test_agent_refuses_a_0644_cluster_key_in_one_line_exit_2(tmp_path: Path) -> None:
    path = key_at(tmp_path / "cluster.key", 0o644)
    out = mesh_agent(
        "run", "--profile", "local", "--data-dir", str(tmp_path / "data"), "--bind", "127.0.0.1",
        "--port", "0", "--no-mdns", "--key-file", str(path), "--socket", str(tmp_path / "a.sock"),
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"mesh-agent: config error: key_file: key file {path} is readable by group or others "
        f"(mode 0644); run: chmod 600 {path}"
    ]


def test_meshtui_keys_install_refuses_a_readable_key_file(tmp_path: Path) -> None:
    path = key_at(tmp_path / "new.key", 0o644)
    out = subprocess.run(
        [sys.executable, "-m", "meshtui.cli", "keys", "install", "--key-file", str(path),
         "-t", str(tmp_path / "absent.sock")],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and f"run: chmod 600 {path}" in out.stderr
