"""The SWIM simulation's large runs, computed in the background while the suite runs.

A 1,000-node partition run takes about three minutes of one core, and the tests
that check it (in ``test_swim_sim.py``) are pure computation on virtual time.
The rest of ``tests/sim`` and ``tests/unit`` is computation too, on one core,
so the root ``conftest.py`` runs those two directories last, computes the large
runs beside them on the other core, and reads the large runs' results at the very
end.  The runs are in worker processes at the lowest CPU priority Linux has
(``SCHED_IDLE``: they run only on a core nothing else wants); a run not done
by its test is waited for, as before.  They do not overlap the real-mesh tests:
those read the host's CPU load, which the runs would raise to 100%.

The runner is forked right after collection, before any test has started a
thread or an event loop, and detached (see ``Background``).  Its workers are
forked too: spawn's semaphores would start multiprocessing's resource tracker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

import pytest

from sim import swimruns
from sim.swimnet import replay_hint, sim_seed

# The large runs (functions in swimruns.py), keyed by the test that checks each,
# longest first, so the longest starts at once.
LARGE_RUNS: dict[str, tuple[Callable[..., str], int, tuple[object, ...]]] = {
    "test_1000_nodes_30_70_partition_detected_on_both_sides_then_heals_to_one_membership": (
        swimruns.partition_30_70,
        3031,
        (1000, 0.999, 150.0),
    ),
    "test_ten_percent_loss_no_false_death_over_10000_probe_rounds[1000-nodes-x-100-rounds]": (
        swimruns.lossy_network,
        2002,
        (1000, 100),
    ),
    "test_ten_percent_loss_no_false_death_over_10000_probe_rounds[10-nodes-x-10000-rounds]": (
        swimruns.lossy_network,
        2002,
        (10, 10_000),
    ),
    "test_1000_nodes_join_and_failure_reach_999_permille_within_epidemic_bound": (
        swimruns.join_and_failure,
        1001,
        (1000,),
    ),
    "test_30_70_partition_of_200_nodes_every_view_marks_the_other_side_dead": (
        swimruns.partition_30_70,
        3003,
        (200, 1.0, 120.0),
    ),
}


def _lowest_priority() -> None:
    """Worker initializer: run only on otherwise idle CPU."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def _is_large(item: pytest.Item) -> bool:
    return item.name in LARGE_RUNS and item.nodeid.startswith("tests/sim/test_swim_sim.py::")


class Background:
    """The selected large runs, computed by a detached process tree.

    Detached (forked twice, in a session of its own), so its processes are not
    the pytest process's children: ``test_executor``'s leak check counts those,
    and the executor tests reap children.  Each result comes back as a pickle
    file in a private temp directory; the process tree is killed at the end of
    the session if it is still running."""

    def __init__(self, names: list[str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="mt-large-runs-")
        self._seeds = {name: sim_seed(LARGE_RUNS[name][1]) for name in names}
        read_end, write_end = os.pipe()
        go_read, self._go = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the detached side
            os.close(read_end)
            os.close(self._go)
            _detach_and_run(self._dir, self._seeds, write_end, go_read)
        os.close(write_end)
        os.close(go_read)
        os.waitpid(child, 0)
        with os.fdopen(read_end, "rb") as pipe:
            self._pid = int(pipe.read() or b"0")

    def go(self) -> None:
        """Start computing (the runner waits for this; see ``go_when``)."""
        if self._go >= 0:
            with contextlib.suppress(OSError):
                os.write(self._go, b"g")
                os.close(self._go)
            self._go = -1

    def report(self, request: pytest.FixtureRequest) -> str:
        """Wait for the run of the asking test; re-raise its failure with its seed."""
        self.go()
        name = request.node.name
        path = os.path.join(self._dir, f"{_slug(name)}.pickle")
        with replay_hint(self._seeds[name]):
            while not os.path.exists(path):
                if not _alive(self._pid):
                    raise AssertionError(f"the background process computing {name} died")
                time.sleep(0.2)
            with open(path, "rb") as file:
                ok, value = pickle.load(file)
            if not ok:
                raise value
        print(value)
        return str(value)

    def close(self) -> None:
        """Stop at once: a session cut short (``-x``, Ctrl-C) must not wait minutes
        for runs nobody will read."""
        if self._go >= 0:
            os.close(self._go)  # the waiting runner reads end of file and exits
            self._go = -1
        if self._pid and _alive(self._pid):
            with contextlib.suppress(OSError):
                os.killpg(self._pid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive; it is not our child, so init reaps it soon.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _detach_and_run(  # pragma: no cover
    directory: str, seeds: dict[str, int], pid_pipe: int, go_pipe: int
) -> None:
    """In the first child: fork the runner, hand its pid back, exit.  The runner
    waits for the go byte; end of file instead means the session ended."""
    try:
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
        os.write(pid_pipe, str(os.getpid()).encode())
        os.close(pid_pipe)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if os.read(go_pipe, 1) != b"g":
            return
        _lowest_priority()
        workers = max(1, min(len(seeds), os.cpu_count() or 1))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {
                pool.submit(LARGE_RUNS[name][0], seed, *LARGE_RUNS[name][2]): name
                for name, seed in seeds.items()
            }
            for future in as_completed(futures):
                try:
                    result: tuple[bool, object] = (True, future.result())
                except BaseException as exc:
                    result = (False, exc)
                path = os.path.join(directory, f"{_slug(futures[future])}.pickle")
                with open(path + ".tmp", "wb") as file:
                    pickle.dump(result, file)
                os.rename(path + ".tmp", path)
    finally:
        os._exit(0)


_current: Background | None = None


# The runs start when the first test of these directories starts, and the
# tests there run after every other: they compute on virtual time and read no
# CPU load, which the runs raise to 100% (the system-wide busy fraction counts
# an idle-priority process too, so a real mesh's hot/cold tests must not overlap).
QUIET_NEIGHBOURS = ("tests/sim/", "tests/unit/")


def order_last(items: list[pytest.Item]) -> None:
    """Reorder in place: everything else, then ``QUIET_NEIGHBOURS``, then the tests
    that read the large runs.  Stable: the order within each group is kept."""
    items.sort(key=lambda item: (_is_large(item), item.nodeid.startswith(QUIET_NEIGHBOURS)))


def go_when(item: pytest.Item) -> None:
    """Let the runner compute once the quiet part of the session begins."""
    if _current is not None and item.nodeid.startswith(QUIET_NEIGHBOURS):
        _current.go()


def start(items: list[pytest.Item]) -> None:
    global _current
    names = [item.name for item in items if _is_large(item)]
    if names and _current is None:
        _current = Background(names)


def current(items: list[pytest.Item]) -> Background:
    """The running runner (started lazily if the hooks did not start it)."""
    start(items)
    assert _current is not None
    return _current


def stop() -> None:
    global _current
    if _current is not None:
        _current.close()
        _current = None
