"""The root-test policy, importable by any test module.

It lives outside ``conftest.py`` because several directories have a
``conftest`` module: ``from conftest import ...`` would get whichever was
imported first.  Policy: not root and ``CI`` unset -> skip with a reason;
``CI`` set and not root, or a required tool missing -> fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

import pytest

ROOT_SKIP_REASON = "needs root for network namespaces (runs under CI=true)"
DEFAULT_ROOT_TOOLS: tuple[str, ...] = ("ip", "nft", "tc")


def in_ci() -> bool:
    """True when the suite runs under CI (``CI=true``, as GitHub and .ci/run set it)."""
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no")


def is_root() -> bool:
    return os.geteuid() == 0


def missing_tools(tools: Iterable[str]) -> list[str]:
    """Tools from ``tools`` not found on PATH (sbin dirs included: root tools live there)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin"
    return [tool for tool in tools if shutil.which(tool, path=path) is None]


def enforce_root_policy(tools: Iterable[str] = DEFAULT_ROOT_TOOLS) -> None:
    """Skip or fail the current test according to the module policy."""
    if not is_root():
        if in_ci():
            pytest.fail(f"CI=true but not running as root: {ROOT_SKIP_REASON}")
        pytest.skip(ROOT_SKIP_REASON)
    missing = missing_tools(tools)
    if missing:
        message = f"root test needs missing tools: {', '.join(missing)}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
