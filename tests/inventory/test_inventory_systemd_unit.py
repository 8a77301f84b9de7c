"""The systemd unit deploy writes, checked by systemd's own tools (no systemd needs to run).

``systemd-analyze verify --root=R`` loads the unit from a root that holds the
distribution's units and an executable at the unit's ``ExecStart`` (so a typo
in the path, a bad directive or a missing dependency fails), and
``systemd-analyze security --offline=true`` scores its hardening against
``UNIT_EXPOSURE_LIMIT`` (documented in inventory/agentfiles.py and
inventory/README.md).  Skipped without systemd-analyze locally; under CI=true
a missing tool fails (``.ci/run`` installs systemd).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rootpolicy import in_ci

from inventory import load_inventory
from inventory.agentfiles import UNIT_EXPOSURE_LIMIT, agent_argv, render_systemd_unit, unit_path
from inventory.hostvars import Host

ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                     if (p / "sysinit.target").exists()), None)


@pytest.fixture(autouse=True)
def _tools() -> None:
    if ANALYZE is None or SYSTEM_UNITS is None:
        message = "systemd-analyze and the distribution's units (/usr/lib/systemd/system) are needed"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def host(tmp_path: Path, extra: str = "") -> Host:
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  hosts:\n    n1: {" + extra + "}\n")
    return load_inventory(inv).host("n1")


def make_root(tmp_path: Path, h: Host, with_exec: bool = True) -> Path:
    root = tmp_path / "root"
    assert SYSTEM_UNITS is not None
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    if with_exec:
        exe = root / agent_argv(h)[0].lstrip("/")
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    unit = root / unit_path(h).lstrip("/")
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_systemd_unit(h))
    return root


def verify(root: Path, h: Host) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", f"--root={root}", unit_path(h)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra", ["", "mesh_prefix: /srv/mesh tools, mesh_service: mesh-edge"])
def test_unit_verifies_against_a_root_with_its_exec_start(tmp_path: Path, extra: str) -> None:
    h = host(tmp_path, extra)
    done = verify(make_root(tmp_path, h), h)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_verify_catches_a_missing_exec_start(tmp_path: Path) -> None:
    h = host(tmp_path)
    done = verify(make_root(tmp_path, h, with_exec=False), h)
    assert done.returncode != 0
    assert "mesh-agent is not executable" in done.stderr


def test_unit_delegates_its_cgroup_and_meets_the_exposure_limit(tmp_path: Path) -> None:
    h = host(tmp_path)
    text = render_systemd_unit(h)
    assert "\nDelegate=yes\n" in text
    unit = make_root(tmp_path, h) / unit_path(h).lstrip("/")
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=true", f"--threshold={round(UNIT_EXPOSURE_LIMIT * 10)}",
         str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert level is not None, done.stdout + done.stderr
    print(f"exposure {level[1]} (limit {UNIT_EXPOSURE_LIMIT})")
    assert float(level[1]) <= UNIT_EXPOSURE_LIMIT, done.stdout
    assert done.returncode == 0, done.stderr
