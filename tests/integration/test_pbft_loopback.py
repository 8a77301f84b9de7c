"""Issue 13 on loopback: 5 real agents with ``consensus = "pbft"``, ``replicas = 4``.

They form a 4-replica PBFT cluster from key-derived ids (the fifth host
follows committed batches on f+1 signatures); writes and linearizable reads go
through the protocol from any host; status and report carry the view,
watermarks, f and the replicas' key fingerprints; SIGKILL of the primary is
followed by a view change and writes resume, and the killed host rejoins from
its data dir.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_until

from meshtui.client import ClientError, call_sync
from meshtui.demo import LocalMesh

pytestmark = pytest.mark.timeout(240)


def _status(node: Any) -> dict[str, Any] | None:
    try:
        return dict(call_sync(node.socket_path, "status", {}, 2.0))
    except ClientError:
        return None


def _formed(mesh: LocalMesh) -> bool:
    views = [_status(n) for n in mesh.nodes if n.running]
    roles = [v["consensus"]["role"] if v else None for v in views]
    replicas = sum(1 for r in roles if r in ("primary", "replica"))
    return all(r in ("primary", "replica", "follower") for r in roles) and replicas >= len(roles) - 1


def _primary(mesh: LocalMesh) -> str | None:
    for node in mesh.nodes:
        st = _status(node) if node.running else None
        pbft = st["consensus"]["pbft"] if st else None
        if pbft and pbft.get("active") and pbft.get("primary") and not pbft.get("follower"):
            return str(st["consensus"]["pbft"]["primary"])
    return None


def _describe(mesh: LocalMesh) -> str:
    out = []
    for node in mesh.nodes:
        st = _status(node) if node.running else None
        out.append(f"{node.name}: {st['consensus'] if st else 'down'}")
    return "; ".join(out)


def _writes(mesh: LocalMesh, counter: itertools.count[int]) -> bool:
    for node in mesh.nodes:
        if not node.running:
            continue
        try:
            call_sync(node.socket_path, "kv.put",
                      {"ns": "t", "key": "probe", "value": str(next(counter)).encode()}, 3.0)
            return True
        except ClientError:
            continue
    return False


def _log_tails(mesh: LocalMesh) -> str:
    """What each agent logged last (why a host did not start or join)."""
    tails = []
    for node in mesh.nodes:
        text = node.log_file.read_text(errors="replace") if node.log_file.exists() else ""
        tails.append(f"\n--- {node.name} (running={node.running})\n" + "\n".join(text.splitlines()[-8:]))
    return "".join(tails)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("pbft")
    cfg = base / "pbft.toml"
    cfg.write_text('consensus = "pbft"\nreplicas = 4\n')
    mesh = LocalMesh(5, base_dir=base, extra_args=["--config", str(cfg)])
    mesh.start()
    try:
        assert mesh.wait_ready(30), _log_tails(mesh)
        wait_until("a 4-replica PBFT cluster", lambda: _formed(mesh), 60, 0.3,
                   detail=lambda: _describe(mesh) + _log_tails(mesh))
        yield mesh
    finally:
        mesh.stop()


def _role(mesh: LocalMesh, role: str) -> Any:
    return next(n for n in mesh.nodes if (st := _status(n)) and st["consensus"]["role"] == role)


def test_writes_and_linearizable_reads_go_through_pbft(mesh: LocalMesh) -> None:
    first, other = mesh.nodes[0], mesh.nodes[3]
    # The follower's first linearizable read, right after formation: it may have missed
    # the first EXECUTEDs (sent before the replicas listed it as an observer); it must
    # ask for them again, not wait for a stable checkpoint K seqs later (the old flake).
    follower = _role(mesh, "follower")
    writer = next(n for n in mesh.nodes if n is not follower)
    call_sync(writer.socket_path, "kv.put", {"ns": "t", "key": "z", "value": b"0"}, 5.0)
    assert call_sync(follower.socket_path, "kv.get", {"ns": "t", "key": "z"}, 5.0)["value"] == b"0"
    call_sync(first.socket_path, "kv.put", {"ns": "t", "key": "a", "value": b"1"}, 5.0)
    got = call_sync(other.socket_path, "kv.get", {"ns": "t", "key": "a"}, 5.0)
    assert got["value"] == b"1" and got["found"]
    cas = call_sync(other.socket_path, "kv.cas",
                    {"ns": "t", "key": "a", "expected": b"1", "value": b"2"}, 5.0)
    assert cas["ok"]
    assert call_sync(first.socket_path, "kv.get", {"ns": "t", "key": "a"}, 5.0)["value"] == b"2"
    st = _status(writer)  # a replica (the follower has no watermarks)
    assert st is not None
    pbft = st["consensus"]["pbft"]
    assert st["consensus"]["engine"] == "pbft" and pbft["n"] == 4 and pbft["f"] == 1
    assert len(pbft["fingerprints"]) == 4
    assert all(fp.startswith("SHA256:") for fp in pbft["fingerprints"].values())
    assert pbft["high"] - pbft["low"] == 2 * 32  # local profile: K = 32, L = 2K
    report = call_sync(writer.socket_path, "report", {}, 5.0)
    assert report["byzantine_tolerance_f"] == 1
    assert report["pbft"]["checkpoint_lag"] is not None


def test_the_fifth_host_follows_and_reads_through_the_protocol(mesh: LocalMesh) -> None:
    follower = _role(mesh, "follower")
    writer = next(n for n in mesh.nodes if n is not follower)
    for i in range(40):  # past a checkpoint (K = 32): a follower that missed some catches up
        call_sync(writer.socket_path, "kv.put", {"ns": "f", "key": "k", "value": str(i).encode()}, 5.0)
    got = call_sync(follower.socket_path, "kv.get", {"ns": "f", "key": "k"}, 10.0)
    assert got["value"] == b"39"
    call_sync(follower.socket_path, "kv.put", {"ns": "f", "key": "k", "value": b"from-follower"}, 5.0)
    assert call_sync(writer.socket_path, "kv.get", {"ns": "f", "key": "k"}, 5.0)["value"] == b"from-follower"


def _meshtui(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshtui.cli", *argv],
                          capture_output=True, text=True, timeout=30, check=False)


def _group(mesh: LocalMesh) -> set[tuple[str, ...]]:
    """The replica group each running host reports (one entry when they agree)."""
    return {tuple(sorted(st["consensus"]["voters"])) for n in mesh.nodes if n.running and (st := _status(n))}


def test_replicas_replace_swaps_a_replica_for_the_follower_through_the_protocol(mesh: LocalMesh) -> None:
    follower = _role(mesh, "follower")
    old = _role(mesh, "replica")
    sock = mesh.nodes[0].socket_path
    listed = _meshtui("replicas", "--target", sock)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("replica  ") == 4 and f"follower {follower.name}" in listed.stdout
    # Refusals are one line, exit 2.
    for bad_old, bad_new, why in ((follower.name, old.name, "is not a replica"),
                                  (old.name, old.name, "is already a replica"),
                                  (old.name, "nosuchhost", "is not a live member")):
        refused = _meshtui("replicas", "replace", bad_old, bad_new, "--target", sock)
        assert refused.returncode == 2 and why in refused.stderr, refused
        assert len(refused.stderr.strip().splitlines()) == 1
    before = _status(old)
    assert before is not None
    done = _meshtui("replicas", "replace", old.name, follower.name, "--target", sock)
    assert done.returncode == 0 and "agreed" in done.stdout, done
    wanted = tuple(sorted({*before["consensus"]["voters"], follower.name} - {old.name}))
    wait_until("every host on the new replica group", lambda: _group(mesh) == {wanted}, 60, 0.3,
               detail=lambda: _describe(mesh))

    def swapped() -> bool:
        st, nt = _status(old), _status(follower)
        return bool(st and nt and st["consensus"]["role"] == "follower"
                    and nt["consensus"]["role"] in ("replica", "primary"))

    wait_until("the old replica following, the new one a replica", swapped, 60, 0.3,
               detail=lambda: _describe(mesh))
    # Writes and linearizable reads work with the new group, from both hosts.
    call_sync(follower.socket_path, "kv.put", {"ns": "r", "key": "k", "value": b"new"}, 10.0)
    assert call_sync(old.socket_path, "kv.get", {"ns": "r", "key": "k"}, 10.0)["value"] == b"new"
    call_sync(old.socket_path, "kv.put", {"ns": "r", "key": "k", "value": b"old"}, 10.0)
    assert call_sync(follower.socket_path, "kv.get", {"ns": "r", "key": "k"}, 10.0)["value"] == b"old"
    after = _meshtui("replicas", "--target", sock).stdout
    assert f"replica  {follower.name} " in after and f"follower {old.name} " in after
    status = _meshtui("status", "--target", old.socket_path).stdout
    assert "role=follower" in status and follower.name in status.split("voters=")[1].splitlines()[0]
    # Both keep their roles across a SIGKILL and restart (<data_dir>/pbft/group, the
    # new replica's stable checkpoint), and the old host catches up as a follower.
    for node in (old, follower):
        mesh.kill(node.name, signal.SIGKILL)
        mesh.restart(node.name)
    wait_until("the swapped roles after a restart", swapped, 60, 0.3, detail=lambda: _describe(mesh))
    call_sync(follower.socket_path, "kv.put", {"ns": "r", "key": "k", "value": b"again"}, 10.0)
    assert call_sync(old.socket_path, "kv.get", {"ns": "r", "key": "k"}, 10.0)["value"] == b"again"


def test_meshtui_status_shows_the_key_fingerprints(mesh: LocalMesh) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "meshtui.cli", "status", "--target", mesh.nodes[1].socket_path],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert "pbft: view=" in out and out.count("key n") == 4 and "SHA256:" in out
    assert "\nreplicas: " in out, out  # the group; a pending replacement gets a line too


def test_sigkill_of_the_primary_changes_the_view_and_writes_resume(mesh: LocalMesh) -> None:
    counter = itertools.count()
    primary = wait_until("a primary", lambda: _primary(mesh), 30, 0.3)
    before = _status(mesh.node(primary))
    assert before is not None
    view = before["consensus"]["pbft"]["view"]
    mesh.kill(primary, signal.SIGKILL)
    wait_until("a write after the primary's SIGKILL", lambda: _writes(mesh, counter), 60, 0.3,
               detail=lambda: _describe(mesh))
    new = wait_until("a new primary", lambda: _primary(mesh), 30, 0.3)
    assert new != primary
    live = [s["consensus"]["pbft"] for n in mesh.nodes if n.running and (s := _status(n))]
    assert all(p["view"] > view for p in live if not p.get("follower"))
    mesh.restart(primary)
    wait_until("the killed host back as a replica", lambda: _formed(mesh), 60, 0.3,
               detail=lambda: _describe(mesh))
    assert _writes(mesh, counter)


def test_a_pbft_data_dir_refuses_a_raft_id(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "node_id").write_text("0" * 32 + "\n")
    key = tmp_path / "k"
    subprocess.run([sys.executable, "-m", "agent.cli", "keygen", str(key)], check=False,
                   capture_output=True, timeout=30)
    cfg = tmp_path / "c.toml"
    cfg.write_text('consensus = "pbft"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--profile", "local", "--config", str(cfg),
         "--name", "x", "--data-dir", str(data), "--port", "0", "--insecure-no-key",
         "--socket", str(tmp_path / "s.sock"), "--no-mdns"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "key-derived ids" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
