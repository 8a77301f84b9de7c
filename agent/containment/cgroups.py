"""cgroup v1 and v2 as this agent uses them: discovery, per-task groups, limits, kill.

Theory of operation
-------------------
* Discovery reads ``/proc/self/mountinfo`` and keeps the cgroup mounts below
  the cgroup root (``/sys/fs/cgroup`` unless a test points it elsewhere): one
  ``Hierarchy`` per v2 mount and per v1 mount carrying real controllers
  (named hierarchies such as ``name=systemd`` belong to their owner).
* Layout: ``<mount>/meshtui/<node id>/<task id>-<epoch>`` in every hierarchy
  a task needs.  Agents sharing one kernel (the demo, the namespace tests)
  each stay below their own node directory, so no agent touches another's
  tasks.  The hierarchy root is used rather than the agent's own cgroup: the
  v2 root is exempt from the "no internal processes" rule (controllers can be
  enabled there), and a restarted agent finds its stale groups wherever it
  now runs.
* Kill: v2 writes ``1`` to ``cgroup.kill`` (one atomic SIGKILL to every
  member, forking or not).  Without it the group is frozen (v2
  ``cgroup.freeze``, v1 ``freezer.state``) so nobody can fork, every member is
  SIGKILLed, and the group is thawed so the kills land; a hierarchy with
  neither only SIGKILLs what ``cgroup.procs`` lists.  Rounds repeat until
  the group and its sub-groups are empty, with a deadline.
* Limits: v2 ``memory.max`` (and ``memory.swap.max`` 0, so swap is no way
  around it) and ``pids.max``; v1 ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes`` where swap is accounted) and ``pids.max``.

Only the standard library here: ``agent.watchdog`` imports this module to
kill registered groups when the agent stops renewing its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

Dir = str | Path
"""A cgroup directory: a task run's are plain strings (no ``Path`` built per run)."""

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where cgroup hierarchies are looked for (only mounts below it are used)."""
TOP_DIR = "meshtui"
"""Directory every agent's node directories live under, in each hierarchy."""
V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
    "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc",
})  # fmt: skip
KILL_TIMEOUT_S = 5.0
"""Longest a kill-until-empty loop runs (a member stuck in D state can outlast it)."""
KILL_ROUND_PAUSE_S = 0.005
"""Pause between kill rounds: the kernel needs a moment to tear SIGKILLed members down."""
FREEZE_WAIT_S = 0.05
"""Longest one v1/v2 freeze waits to complete before the round kills anyway."""
RMDIR_RETRIES = 100
"""rmdir attempts (EBUSY while the last members exit) before a directory is left behind."""


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted cgroup hierarchy."""

    mount: Path
    version: int
    """1 (a v1 controller mount) or 2 (the unified hierarchy)."""
    controllers: frozenset[str]
    """v1: the controllers bound to this mount; v2: those in the root's ``cgroup.controllers``."""
    root: str = "/"
    """The cgroup this mount shows at ``mount`` (mountinfo's root field; ``/`` for a
    whole hierarchy, a path for a bind mount of one of its groups)."""

    def node_dir(self, node: str) -> Path:
        return self.mount / TOP_DIR / node

    def describe(self) -> str:
        if self.version == 2:
            return f"v2 {self.mount}"
        return f"v1 {','.join(sorted(self.controllers))} {self.mount}"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def discover(root: Path = CGROUP_ROOT, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Hierarchy]:
    """The cgroup hierarchies mounted at or below ``root`` (none if it holds no cgroup mount)."""
    try:
        root = root.resolve()
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    found: list[Hierarchy] = []
    seen: set[tuple[int, frozenset[str]]] = set()
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, super_fields = left.split(), right.split()
        if not sep or len(fields) < 5 or len(super_fields) < 3:
            continue
        fstype, mount, mount_root = super_fields[0], Path(_unescape(fields[4])), _unescape(fields[3])
        if fstype not in ("cgroup", "cgroup2") or not _under(mount, root):
            continue
        if fstype == "cgroup2":
            version, controllers = 2, frozenset(_read(mount / "cgroup.controllers").split())
        else:
            version = 1
            controllers = frozenset(super_fields[2].split(",")) & V1_CONTROLLERS
            if not controllers:
                continue  # a named hierarchy (name=systemd): not ours to use
        key = (version, controllers if version == 1 else frozenset())
        if key not in seen:
            seen.add(key)
            found.append(Hierarchy(mount, version, controllers, mount_root))
    return found


def own_group(hierarchy: Hierarchy, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path | None:
    """The v2 cgroup directory this process is in, as seen through ``hierarchy``'s mount;
    None for v1, or when that group is not visible below the mount."""
    if hierarchy.version != 2:
        return None
    for line in _read(proc_cgroup).splitlines():
        if line.startswith("0::"):
            path, root = line[3:], hierarchy.root.rstrip("/")
            if path != root and not path.startswith(root + "/"):
                return None  # outside the part of the hierarchy mounted here
            directory = hierarchy.mount / path[len(root):].lstrip("/")
            return directory if (directory / "cgroup.procs").exists() else None
    return None


def _read(path: Dir) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except OSError:
        return ""
    finally:
        os.close(fd)


def _write(path: Dir, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def make_dirs(hierarchy: Hierarchy, node: str) -> Path:
    """Create ``<mount>/meshtui/<node>`` (mode 0755, root-owned); returns it."""
    node_dir = hierarchy.node_dir(node)
    node_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    return node_dir


def enable_v2_controller(hierarchy: Hierarchy, node: str, controller: str) -> bool:
    """Enable ``controller`` for ``<mount>/meshtui/<node>``'s children (every level above
    it delegates it down); False if the hierarchy will not (EBUSY below a populated
    non-root cgroup, or the controller is bound to a v1 mount)."""
    if hierarchy.version != 2 or controller not in hierarchy.controllers:
        return False
    level = hierarchy.mount
    try:
        for step in ("", TOP_DIR, node):
            level = level / step if step else level
            control = level / "cgroup.subtree_control"
            if controller not in _read(control).split():
                _write(control, f"+{controller}")
    except OSError:
        return False
    return True


def probe(hierarchy: Hierarchy, node: str) -> str | None:
    """Can this agent create, use and remove task groups here?  None if so, else why not.

    Leaves nothing behind that was not there before.
    """
    node_dir = hierarchy.node_dir(node)
    created = not node_dir.exists()
    try:
        make_dirs(hierarchy, node)
        if not (node_dir / "cgroup.procs").exists():
            return f"{node_dir} is not a cgroup directory"
    except OSError as exc:
        return f"cannot create {node_dir}: {exc.strerror or exc}"
    finally:
        if created:
            with contextlib.suppress(OSError):
                node_dir.rmdir()
    return None


# ---------------------------------------------------------------- task groups


@dataclass(frozen=True, slots=True)
class TaskGroup:
    """One task run's cgroup directories: ``dirs[0]`` is the one kills go through."""

    dirs: tuple[Dir, ...]

    @property
    def kill_dir(self) -> Dir:
        return self.dirs[0]

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(f"{d}/cgroup.procs" for d in self.dirs)


def create_group(dirs: Iterable[Dir]) -> TaskGroup:
    """mkdir each task directory (a leftover of the same name is killed and reused)."""
    made: list[Dir] = []
    try:
        for directory in dirs:
            try:
                os.mkdir(directory, 0o755)
                made.append(directory)  # new: nothing in it
            except FileExistsError:
                made.append(directory)
                if member_pids([directory]):
                    kill_until_empty(TaskGroup((directory,)))
    except OSError:
        remove_group(TaskGroup(tuple(made)))
        raise
    return TaskGroup(tuple(made))


def set_memory_limit(directory: Dir, version: int, limit: int) -> None:
    if version == 2:
        _write(f"{directory}/memory.max", str(limit))
        if os.path.exists(f"{directory}/memory.swap.max"):
            _write(f"{directory}/memory.swap.max", "0")
    else:
        _write(f"{directory}/memory.limit_in_bytes", str(limit))
        if os.path.exists(f"{directory}/memory.memsw.limit_in_bytes"):
            _write(f"{directory}/memory.memsw.limit_in_bytes", str(limit))


def set_pids_limit(directory: Dir, limit: int) -> None:
    _write(f"{directory}/pids.max", str(limit))


def _tree(directory: Dir) -> list[Dir]:
    """``directory`` and every cgroup below it (a root task may nest its own)."""
    out = [directory]
    with contextlib.suppress(OSError):
        for dirpath, dirnames, _ in os.walk(directory):
            out.extend(f"{dirpath}/{name}" for name in dirnames)
    return out


def member_pids(dirs: Iterable[Dir]) -> set[int]:
    """Every process in ``dirs`` and their sub-groups."""
    pids: set[int] = set()
    for directory in dirs:
        for group in _tree(directory):
            for word in _read(f"{group}/cgroup.procs").split():
                if word.isdigit():
                    pids.add(int(word))
    return pids


def _freeze(directory: Dir, frozen: bool) -> bool:
    """Freeze or thaw through v2 ``cgroup.freeze`` or v1 ``freezer.state``; False if neither."""
    v2, v1 = f"{directory}/cgroup.freeze", f"{directory}/freezer.state"
    try:
        if os.path.exists(v2):
            _write(v2, "1" if frozen else "0")
            done = (lambda: "frozen 1" in _read(f"{directory}/cgroup.events")) if frozen else None
        elif os.path.exists(v1):
            _write(v1, "FROZEN" if frozen else "THAWED")
            done = (lambda: _read(v1).strip() == "FROZEN") if frozen else None
        else:
            return False
    except OSError:
        return False
    deadline = time.monotonic() + FREEZE_WAIT_S
    while done is not None and not done() and time.monotonic() < deadline:
        time.sleep(0.001)
    return True


def populated(directory: Dir) -> bool | None:
    """Whether a v2 cgroup or any below it holds a live process (its ``cgroup.events``;
    a zombie does not count); None where there is no such file (v1)."""
    for line in _read(f"{directory}/cgroup.events").splitlines():
        if line.startswith("populated "):
            return line != "populated 0"
    return None


def kill_round(group: TaskGroup, spare: int = 0) -> bool:
    """One kill pass over the group; True if it was already empty.

    ``spare``: a pid that, when it is a member, is left alive and not counted
    (the agent itself, when it could not step back out of a run's group after a
    spawn).  Such a round signals each other member and never writes
    ``cgroup.kill`` or freezes the group, either of which would take the agent
    with it."""
    if len(group.dirs) == 1 and populated(group.kill_dir) is False:
        return True  # one read, not a walk and a read per cgroup
    pids = member_pids(group.dirs)
    if spare in pids:
        pids.discard(spare)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return not pids
    if not pids:
        return True
    kill_file = f"{group.kill_dir}/cgroup.kill"
    if os.path.exists(kill_file):
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
            return False
    frozen = _freeze(group.kill_dir, True)
    try:
        for pid in member_pids(group.dirs) if frozen else pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    finally:
        if frozen:
            _freeze(group.kill_dir, False)
    return False


def kill_until_empty(group: TaskGroup, timeout: float = KILL_TIMEOUT_S, spare: int = 0) -> bool:
    """Kill rounds until nothing is left (True) or ``timeout`` passes (False).  Blocking.
    ``spare`` as in ``kill_round``."""
    deadline = time.monotonic() + timeout
    while not kill_round(group, spare):
        if time.monotonic() >= deadline:
            return False
        time.sleep(KILL_ROUND_PAUSE_S)
    return True


async def kill_until_empty_async(
    group: TaskGroup, timeout: float = KILL_TIMEOUT_S, spare: int = 0
) -> bool:
    """``kill_until_empty`` that yields to the event loop between rounds."""
    deadline = time.monotonic() + timeout
    while not kill_round(group, spare):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(KILL_ROUND_PAUSE_S)
    return True


def remove_group(group: TaskGroup) -> list[Dir]:
    """rmdir the group's directories (sub-groups first); the ones left behind."""
    left: list[Dir] = []
    for directory in group.dirs:
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # the usual case: no sub-group, nothing left in it
            continue
        for sub in reversed(_tree(directory)):
            if not _rmdir(sub):
                left.append(sub)
    return left


def _rmdir(directory: Dir) -> bool:
    for _ in range(RMDIR_RETRIES):
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return False
            time.sleep(KILL_ROUND_PAUSE_S)  # the last members are still being torn down
    return False


def remove_node_dir_if_empty(hierarchy: Hierarchy, node: str) -> None:
    """rmdir ``<mount>/meshtui/<node>`` once no task group is left in it (never ``meshtui``:
    other agents on this kernel share it)."""
    with contextlib.suppress(OSError):
        hierarchy.node_dir(node).rmdir()


def stale_groups(hierarchy: Hierarchy, node: str) -> list[Path]:
    """Task group directories left under this node's directory (a previous run of the agent)."""
    try:
        return sorted(p for p in hierarchy.node_dir(node).iterdir() if p.is_dir())
    except OSError:
        return []


def join(procs_files: Iterable[Dir]) -> None:
    """Move the calling process into each group (runs in the forked child before exec)."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        move(path, pid)


def move(procs_file: Dir, pid: bytes) -> None:
    """Write ``pid`` (ASCII digits) to one ``cgroup.procs``: that process moves there."""
    fd = os.open(procs_file, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, pid)
    finally:
        os.close(fd)
