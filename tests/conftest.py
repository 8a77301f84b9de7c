"""Shared fixtures and the root-test policy for the whole suite.

Root tests (network namespaces, nft, tc, sshd) are marked ``@pytest.mark.root``
or request the ``requires_root`` fixture.  The policy:

* not root and ``CI`` unset   -> skip, with the reason below;
* ``CI`` set (any non-empty value but "0"/"false") and not root, or a required
  tool missing                -> **fail**: CI must never silently skip them.

A test can name extra tools it needs: ``@pytest.mark.root(tools=("sshd", "ssh"))``.
The default set is ``ip``, ``nft`` and ``tc``.

Other fixtures: ``tmp_data_dir`` (a fresh agent data directory, mode 0700),
``free_port`` (a callable returning a free loopback TCP+UDP port) and
``netns_lab`` (a factory: ``lab = netns_lab(5)`` builds a started NetnsLab,
closed at teardown; it applies the root policy itself).  The namespace
harness lives in ``tests/netns/harness.py`` (``from netns.harness import
NetnsLab``: this directory is on ``sys.path`` because it holds the root
conftest).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

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


def pytest_runtest_setup(item: pytest.Item) -> None:
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


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` (agents use one port for both).

    Bounded: tries at most 50 kernel-chosen ports.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free TCP+UDP port found in 50 attempts")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a loopback port free for TCP and UDP."""
    return find_free_port


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
