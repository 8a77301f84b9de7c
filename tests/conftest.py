"""Shared fixtures and the root-test policy for the whole suite.

Root tests (network namespaces, nft, tc, sshd) are marked ``@pytest.mark.root``
or request the ``requires_root`` fixture.  The policy:

* not root and ``CI`` unset   -> skip, with the reason below;
* ``CI`` set (any non-empty value but "0"/"false") and not root, or a required
  tool missing                -> **fail**: CI must never silently skip them.

A test can name extra tools it needs: ``@pytest.mark.root(tools=("sshd", "ssh"))``.
The default set is ``ip``, ``nft`` and ``tc``.

Other fixtures: ``tmp_data_dir`` (a fresh agent data directory, mode 0700),
``free_port`` (a callable returning a free loopback TCP+UDP port, the one
``support.ports`` helper) and ``netns_lab`` (a factory: ``lab = netns_lab(5)``
builds a started NetnsLab, closed at teardown; it applies the root policy
itself).  The namespace harness lives in ``tests/netns/harness.py``.

Shared test code is imported by its path below ``tests/`` (``from
netns.harness import NetnsLab``, ``from support.wait import wait_until``):
pytest's ``pythonpath = ["tests"]`` puts this directory on ``sys.path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sim import large_runs
from support import ports

if TYPE_CHECKING:
    from netns.harness import NetnsLab

from rootpolicy import (
    DEFAULT_ROOT_TOOLS,
    ROOT_SKIP_REASON,
    enforce_root_policy,
    in_ci,
    is_root,
    missing_tools,
)

__all__ = [
    "DEFAULT_ROOT_TOOLS",
    "ROOT_SKIP_REASON",
    "enforce_root_policy",
    "in_ci",
    "is_root",
    "missing_tools",
]

# Agents the suite starts run on the standard asyncio loop even where uvloop is
# installed (agent/runtime/event_loop.py: MESH_EVENT_LOOP decides what the default
# event_loop = "auto" means); tests/integration/test_raft_uvloop.py runs a mesh on
# uvloop.  Export MESH_EVENT_LOOP=uvloop to run the whole suite's agents on uvloop.
os.environ.setdefault("MESH_EVENT_LOOP", "asyncio")


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    large_runs.order_last(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    # The SWIM simulation's large runs: forked now, computing beside the last,
    # compute-only part of the session (tests/sim/large_runs.py).
    if not session.config.option.collectonly:
        large_runs.start(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    large_runs.stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    large_runs.go_when(item)
    marker = item.get_closest_marker("root")
    if marker is None:
        return
    tools = tuple(marker.kwargs.get("tools", ())) + DEFAULT_ROOT_TOOLS
    enforce_root_policy(dict.fromkeys(tools))


@pytest.fixture
def requires_root() -> None:
    """Fixture form of the ``root`` marker (default tools only)."""
    enforce_root_policy()


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    """A fresh, private agent data directory."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return data_dir


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a loopback port free for TCP and UDP."""
    return ports.free_port


@pytest.fixture
def netns_lab() -> Iterator[Callable[..., NetnsLab]]:
    """Factory for started namespace labs, all closed at teardown."""
    enforce_root_policy()
    from netns.harness import NetnsLab

    labs: list[NetnsLab] = []

    def make(hosts: int, **kwargs: Any) -> NetnsLab:
        lab = NetnsLab(hosts, **kwargs)
        labs.append(lab)
        lab.start()
        return lab

    yield make
    for lab in reversed(labs):
        lab.close()
