"""How the agent's process runs: which event loop (asyncio's or uvloop), and
how the garbage collector is tuned for a busy loop.

uvloop (libuv under asyncio's API, a well-kept drop-in) makes each socket
read, write, timer and callback cheaper; on a busy leader that is a large share
of its CPU per committed write (issue 14).  It is an optional dependency
(``pip install 'meshtui[fast]'``): the agent never needs it, and everything it
does works the same on the standard loop.

The knob is ``event_loop`` in the agent config (``--event-loop``):

* ``auto`` (default): uvloop if it is importable, else the standard loop.
  Installing the ``fast`` extra is the opt-in; the environment variable
  ``MESH_EVENT_LOOP`` (``asyncio`` or ``uvloop``), when set, decides instead,
  so a test suite (``tests/conftest.py`` pins ``asyncio``) or an operator can
  choose for every agent it starts without a config file each;
* ``asyncio``: always the standard loop;
* ``uvloop``: uvloop, and a config error (exit code 2) if it is not installed,
  rather than silently running slower than asked.

An explicit ``asyncio``/``uvloop`` in the config or on the command line wins
over the environment.

The garbage collector (``tune_gc``, on either loop): CPython's default
collects its youngest generation every 700 net new container objects, and a
leader under load (requests, futures, log entries, KV rows) crossed that
hundreds of times a second, with middle and full collections walking the whole
log and state now and then: 0.47 s of a leader's ~2.8 CPU seconds in a 6 s
bench run (issue 14).  ``GC_THRESHOLDS`` collects young objects 28 times less
often (each collection costs about the same per object), and ``gc.freeze()``
after start-up moves everything built until then (modules, config, the
restored state) out of the collector's sight for good.  Nothing relies on the
collector for prompt cleanup (files and sockets are closed explicitly); the
cost is at most ``GC_THRESHOLDS[0]`` cyclic objects waiting a little longer.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from agent.errors import ConfigError

EVENT_LOOPS: Final = ("auto", "asyncio", "uvloop")
"""The values ``event_loop`` accepts."""

ENV_VAR: Final = "MESH_EVENT_LOOP"
"""Environment variable that decides what ``auto`` means (``asyncio`` or ``uvloop``)."""

GC_THRESHOLDS: Final = (20_000, 20, 10)
"""``gc.set_threshold`` for the agent (default 700, 10, 10): young collections
every 20,000 net new container objects instead of 700 (see the module doc)."""

UV_THREADPOOL_SIZE: Final = "2"
"""Threads in libuv's worker pool under uvloop (libuv's default: 4), set through
the ``UV_THREADPOOL_SIZE`` environment variable before the loop is made, unless
the operator set it.  Unit: threads.  Why: uvloop starts the pool at the first
bind of a UDP or TCP socket by host, and uses it only for name lookups
(``getaddrinfo``), a few at start-up and on a join.  Yet every idle thread makes
each move of the agent between cgroups dearer: the agent moves itself into a
run's group and back around each spawn (agent/containment), and a move in and
out cost 107-152 us of kernel CPU with 5 threads against 59-67 us with 3 (issue
14; 2,000 moves, 4 interleaved pairs).  Two threads still resolve two names at
once, so one slow DNS server does not stall the other lookups.  Tasks never see
the variable (their environment is built from a short list; agent/executor.py)."""

T = TypeVar("T")


def tune_gc() -> None:
    """Raise the collector's thresholds (``GC_THRESHOLDS``); call before start-up."""
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_heap() -> None:
    """Once started: collect, then keep what start-up built out of later collections."""
    gc.collect()
    gc.freeze()


def uvloop_available() -> bool:
    """Is uvloop importable here (without importing it)?"""
    return importlib.util.find_spec("uvloop") is not None


def validate_event_loop(value: str) -> None:
    """``ConfigError("event_loop", ...)`` unless ``value`` is one of ``EVENT_LOOPS``."""
    if value not in EVENT_LOOPS:
        raise ConfigError("event_loop", f"must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")


def resolve_event_loop(configured: str, environ: dict[str, str] | None = None) -> str:
    """The loop ``configured`` means here: ``"asyncio"`` or ``"uvloop"`` (module doc).

    ``ConfigError`` for an unknown value, for ``uvloop`` when it is not installed,
    and for a bad ``MESH_EVENT_LOOP``."""
    validate_event_loop(configured)
    env = os.environ if environ is None else environ
    choice = configured
    if choice == "auto":
        pinned = env.get(ENV_VAR, "")
        if pinned:
            if pinned not in ("asyncio", "uvloop"):
                raise ConfigError(
                    "event_loop", f"{ENV_VAR} must be 'asyncio' or 'uvloop', got {pinned!r}"
                )
            choice = pinned
        else:
            choice = "uvloop" if uvloop_available() else "asyncio"
    if choice == "uvloop" and not uvloop_available():
        raise ConfigError(
            "event_loop", "uvloop is not installed (pip install 'meshtui[fast]'), or say asyncio"
        )
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner`` (None: the standard loop); for uvloop it
    also sizes libuv's worker pool (``UV_THREADPOOL_SIZE``) unless already set."""
    if choice != "uvloop":
        return None
    os.environ.setdefault("UV_THREADPOOL_SIZE", UV_THREADPOOL_SIZE)  # see its doc
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` (``"asyncio"`` or ``"uvloop"``)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def describe(choice: str) -> str:
    """For the log: ``"uvloop 0.23.0"`` or ``"asyncio"``."""
    if choice != "uvloop":
        return "asyncio"
    import uvloop

    return f"uvloop {getattr(uvloop, '__version__', '?')}"
