"""Which containment this host gives its tasks, and one jail per task run.

``Containment`` is decided once per executor: with root and a usable cgroup
hierarchy, every run gets a ``CgroupJail`` (its own cgroup in the kill
hierarchy plus the memory/pids groups its limits need); otherwise a
``SubreaperJail`` (the run's leader is ``agent/containment/subreaper.py``).
Kill hierarchy preference: v2 (``cgroup.kill``, else ``cgroup.freeze``), then
a v1 ``freezer`` mount, then any v1 controller mount (kill loop without a
freeze); limits use a v2 controller where the hierarchy enables it, else the
v1 mount of that controller.  A limit no hierarchy can enforce refuses the
task: ``limit_refusal`` says why in one line, never silently unlimited.

Born inside: a run must be in its cgroup before anything of the task runs.  On
a v2 kill hierarchy, for a run whose only group is there and has no memory
controller and no limit, the agent steps into that group itself for the spawn
(``CgroupJail.enter``/``leave``: one write to the group's ``cgroup.procs``, the
``Popen`` -- a vfork, so the child is born in the group and execs the task
directly -- and one write back to the agent's own group).  Otherwise a shell
joins the groups first and then execs the task (``JOIN_SCRIPT``), a second exec
per run: about 0.6-0.9 ms more of the run's CPU on the box this was measured on.
While the agent is inside, nothing else may fork: the spawn window holds a lock
that every ``os.fork`` in this process takes too (``os.register_at_fork``), so a
fork from a worker thread (artifact collection) waits the window out instead
of being born in the task's group.  Why the conditions: a memory controller
would charge the agent's own page faults in the window to the run's group and
keep that group's memcg alive after its rmdir; a pids limit counts the agent's
threads; a second hierarchy would need a second join.  Should the write back
fail (its own group and the hierarchy's root both refuse), the agent is still a
member of the run's group: that jail's kills then spare the agent's pid
(``CgroupJail.holds_agent``: members signalled one by one, never ``cgroup.kill``
or the freezer), each kill first retries the move home, and the host's later
runs join through the shell.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import re
import shutil
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.containment import cgroups
from agent.containment.cgroups import CGROUP_ROOT, Hierarchy, TaskGroup
from agent.containment.subreaper import FORCE_SIGNAL, FORWARDED
from agent.errors import ConfigError, TaskError

Mode = Literal["auto", "cgroup", "subreaper"]
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 127; shift; done; shift; exec "$@"'
"""``sh -c JOIN_SCRIPT mesh-join PROCS... -- ARGV...``: write this shell's pid (the run's,
kept across ``exec``) into each ``cgroup.procs``, then exec ``ARGV``; a failed join
ends the run with 127 before anything of the task runs."""
SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
"""util-linux ``setpriv``: drops to the task's user after the join (without it a
``run_as`` task is spawned the slow way, a fork with a ``preexec_fn``)."""
SUBREAPER_SCRIPT = Path(__file__).with_name("subreaper.py")
LIMITED = ("memory", "pids")
_window = threading.Lock()
"""Held while the agent is inside a task's cgroup to spawn it, and by every ``os.fork``."""


def _new_window() -> None:
    global _window
    _window = threading.Lock()  # the forked child: nobody else holds it here


os.register_at_fork(
    before=lambda: _window.acquire(), after_in_parent=lambda: _window.release(),
    after_in_child=_new_window,
)
_SAFE_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_node(data_dir: Path) -> str:
    """The node directory name of an executor given no node id: one per data dir
    (which one agent holds), stable across restarts so stale groups are found."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()
    return f"dir-{digest[:16]}"


def format_size(size: int) -> str:
    """Bytes as the CLI takes them (``512M``, ``2G``); exact, never rounded."""
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def _kill(pid: int, sig: int, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


@dataclass(slots=True)
class CgroupJail:
    """A run inside its own cgroups: everything in them dies with the run."""

    group: TaskGroup
    owner: Containment
    reaper: bool = False
    blocked_signals: frozenset[signal.Signals] = frozenset()
    direct: bool = False
    """The agent may spawn this run from inside its group (see the module doc)."""
    inside: bool = False
    """The agent is inside the group for this run's spawn: no join shim."""
    emptied: bool = False
    """The kill round after the leader's exit found the group empty: no process is
    left in it to fork, so it stays empty (only a migration could fill it)."""
    holds_agent: bool = False
    """The agent could not step back out after the spawn (``leave``): it is still a
    member, so every kill of this group spares the agent's pid and never writes
    ``cgroup.kill`` or freezes the group (either would kill the agent with the run)."""

    @property
    def cgroup_dirs(self) -> tuple[str, ...]:
        return tuple(map(str, self.group.dirs))

    def popen_args(
        self, argv: list[str], user: pwd.struct_passwd | None
    ) -> tuple[list[str], dict[str, Any]]:
        setpriv = SETPRIV
        if self.inside:
            # Born in the group (``enter``): the task itself is the first exec.
            return ([*_setpriv_argv(setpriv, user), *argv] if user is not None else argv), {}
        procs = self.group.procs_files  # (strings: no work left for the child)
        if user is None or setpriv is not None:
            # The fast path: no preexec_fn, so Popen can vfork (about 1.5 ms of the
            # agent's CPU less per spawn than a fork of the whole agent, measured on a
            # 60 MB process).  The first thing the child execs is a shell that joins
            # the groups (still root, nothing of the task has run) and then execs the
            # task, through setpriv when it drops to the task's user.
            drop = [] if user is None else _setpriv_argv(setpriv, user)
            return ["/bin/sh", "-c", JOIN_SCRIPT, "mesh-join", *procs, "--", *drop, *argv], {}

        def enter() -> None:
            # In the forked child, still root: join first (a dropped user may
            # not write cgroup.procs), then drop to the task's user.  Only
            # thin syscall wrappers run here, no lock another thread may hold.
            cgroups.join(procs)
            if user is not None:
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        return argv, {"preexec_fn": enter}

    def enter(self, user: pwd.struct_passwd | None) -> bool:
        """Before the spawn: step into the run's group when ``direct`` (then
        ``popen_args`` gives the task's own argv).  True when the spawn window is
        held: ``leave`` must follow, whatever the spawn did."""
        if not self.direct or self.owner.home is None or (user is not None and SETPRIV is None):
            return False
        _window.acquire()
        try:
            pid = self.owner.pid_bytes()
            for procs in self.group.procs_files:
                cgroups.move(procs, pid)
            self.inside = True
        except OSError as exc:  # the join shim then (it fails the run if it cannot join)
            self.owner.warn(f"cannot spawn from inside {self.group.kill_dir}: {exc}")
        except BaseException:
            _window.release()
            raise
        return True

    def leave(self) -> None:
        """Back home after a spawn from inside (``enter`` returned True)."""
        try:
            if self.inside and not self.owner.come_home():
                self.holds_agent = True
        finally:
            _window.release()

    def _spare(self) -> int:
        """The pid every kill of this group must spare (0: none)."""
        if self.holds_agent and self.owner.come_home():
            self.holds_agent = False  # out after all (a later try may succeed)
        return os.getpid() if self.holds_agent else 0

    def terminate(self, pid: int) -> None:
        _kill(pid, signal.SIGTERM, group=True)

    def kill(self, pid: int) -> None:
        _kill(pid, signal.SIGKILL, group=True)
        cgroups.kill_round(self.group, self._spare())

    def after_exit(self, pid: int) -> None:
        # The leader is an unreaped zombie: its pid still names the group.
        _kill(pid, signal.SIGKILL, group=True)
        self.emptied = cgroups.kill_round(self.group, self._spare())

    def members(self, pid: int) -> list[int]:
        return sorted(cgroups.member_pids(self.group.dirs))

    async def settle(self) -> None:
        spare = self._spare()
        if not self.emptied and not await cgroups.kill_until_empty_async(
            self.group, spare=spare
        ):
            timeout = cgroups.KILL_TIMEOUT_S
            self.owner.warn(f"processes of {self.group.kill_dir} outlived {timeout} s of kills")
        self._remove()

    def settle_sync(self) -> None:
        cgroups.kill_until_empty(self.group, spare=self._spare())
        self._remove()

    def _remove(self) -> None:
        left = cgroups.remove_group(self.group)
        if left:
            self.owner.warn(f"could not remove cgroup {left[0]}")
        self.owner.release()


@dataclass(slots=True)
class SubreaperJail:
    """A run whose leader is the per-task subreaper (see ``subreaper.py``)."""

    reaper: bool = True
    cgroup_dirs: tuple[str, ...] = ()
    blocked_signals: frozenset[signal.Signals] = frozenset({*FORWARDED, FORCE_SIGNAL})
    """Blocked while the subreaper starts; it unblocks them once its handlers are in."""

    def enter(self, user: pwd.struct_passwd | None) -> bool:
        return False  # the subreaper is never spawned from inside a group

    def leave(self) -> None:
        pass

    def popen_args(
        self, argv: list[str], user: pwd.struct_passwd | None
    ) -> tuple[list[str], dict[str, Any]]:
        shim = [sys.executable, "-I", "-S", str(SUBREAPER_SCRIPT), "--parent", str(os.getpid())]
        if user is not None:
            shim += ["--uid", str(user.pw_uid), "--gid", str(user.pw_gid)]
        return [*shim, "--", *argv], {}

    def terminate(self, pid: int) -> None:
        _kill(pid, signal.SIGTERM, group=False)  # the subreaper passes it to the task's group

    def kill(self, pid: int) -> None:
        _kill(pid, FORCE_SIGNAL, group=False)

    def after_exit(self, pid: int) -> None:
        pass  # the subreaper killed and reaped every descendant before it exited

    def members(self, pid: int) -> list[int]:
        from agent.containment.subreaper import descendants

        return descendants(pid)

    async def settle(self) -> None:
        pass

    def settle_sync(self) -> None:
        pass


Jail = CgroupJail | SubreaperJail


@dataclass
class Containment:
    """This host's containment for one node's task runs (see the module docstring)."""

    node: str
    mode: Mode = "auto"
    cgroup_root: Path = CGROUP_ROOT
    warn: Callable[[str], None] = field(default=lambda _msg: None)
    kill_hierarchy: Hierarchy | None = field(init=False, default=None)
    limits: dict[str, Hierarchy] = field(init=False, default_factory=dict)
    why_not_cgroups: str = field(init=False, default="")
    home: Path | None = field(init=False, default=None)
    """``cgroup.procs`` of the agent's own v2 group, when runs may be spawned from
    inside their group (the module doc's "born inside"); None when not."""
    _homes: tuple[str, ...] = field(init=False, default=())
    """Where ``come_home`` moves the agent, in turn: ``home``, then (a whole hierarchy)
    its root's ``cgroup.procs``."""
    _pid: tuple[int, bytes] = field(init=False, default=(0, b""))
    _hierarchies: list[Hierarchy] = field(init=False, default_factory=list)
    _live: int = field(init=False, default=0)
    _made: dict[Path, str] = field(init=False, default_factory=dict)
    """Mount -> this node's directory in it, made (its controllers enabled) and kept
    until ``close``: a host idle between two short runs does not remove it and make
    it again (an rmdir, a mkdir and the controller writes per run)."""

    def __post_init__(self) -> None:
        if not _SAFE_NODE.match(self.node):
            raise ConfigError("node", f"not usable as a cgroup directory name: {self.node!r}")
        if self.mode not in ("auto", "cgroup", "subreaper"):
            raise ConfigError("containment", f"must be auto, cgroup or subreaper, got {self.mode!r}")
        if self.mode == "subreaper":
            self.why_not_cgroups = "subreaper forced"
            return
        if os.geteuid() != 0:
            self.why_not_cgroups = "the agent is not root"
        else:
            self._choose(cgroups.discover(self.cgroup_root))
        if self.mode == "cgroup" and self.kill_hierarchy is None:
            raise ConfigError("containment", f"cgroup containment unavailable: {self.why_not_cgroups}")

    def _choose(self, found: list[Hierarchy]) -> None:
        # Only the hierarchies this node would use are probed (a probe leaves a
        # shared ``meshtui`` directory behind in each).
        probed: dict[Path, str | None] = {}

        def ok(h: Hierarchy) -> bool:
            if h.mount not in probed:
                probed[h.mount] = cgroups.probe(h, self.node)
            return probed[h.mount] is None

        def rank(h: Hierarchy) -> int:
            if h.version == 2:
                return 0
            return 1 if "freezer" in h.controllers else 2

        for h in sorted(found, key=rank):
            if ok(h):
                self.kill_hierarchy = h
                break
        for controller in LIMITED:
            chosen = self._limit_hierarchy(found, controller, ok)
            if chosen is not None:
                self.limits[controller] = chosen
        self._hierarchies = [h for h in found if probed.get(h.mount, "no") is None]
        # An executor dropped without ``close`` (tests, a crash of its loop) leaves no
        # empty node directory behind either (at its collection, or at exit).
        weakref.finalize(self, _drop_dirs, tuple(h.node_dir(self.node) for h in self._hierarchies))
        self.home = self._spawn_home()
        if self.home is not None and self.kill_hierarchy is not None:
            h = self.kill_hierarchy
            self._homes = (str(self.home),) if h.root != "/" else \
                (str(self.home), f"{h.mount}/cgroup.procs")
        if not found:
            self.why_not_cgroups = f"no cgroup hierarchy mounted under {self.cgroup_root}"
        elif self.kill_hierarchy is None:
            reason = next((r for r in probed.values() if r), "none probed")
            self.why_not_cgroups = f"no usable cgroup hierarchy: {reason}"

    def _spawn_home(self) -> Path | None:
        h = self.kill_hierarchy
        if h is None or h.version != 2 or self.limits.get("memory") is h:
            return None
        own = cgroups.own_group(h)
        if own is None:
            return None
        procs = own / "cgroup.procs"
        try:
            cgroups.join([procs])  # where it already is: may it write there at all?
        except OSError:
            return None
        return procs

    def pid_bytes(self) -> bytes:
        """This process's pid as ``cgroup.procs`` takes it (made again after a fork)."""
        pid = os.getpid()
        if self._pid[0] != pid:
            self._pid = (pid, str(pid).encode())
        return self._pid[1]

    def come_home(self) -> bool:
        """Back from a run's group to the agent's own (else the hierarchy's root);
        False when it cannot: the agent is still in the run's group, whose kills
        must then spare it (``CgroupJail.holds_agent``)."""
        assert self.kill_hierarchy is not None
        error: OSError | None = None
        for procs in self._homes:
            try:
                cgroups.move(procs, self.pid_bytes())
                return True
            except OSError as exc:
                error = exc
        if self.home is not None:  # the first time: say it once
            self.home = None
            self.warn(f"the agent cannot leave a task's cgroup ({error}); its kills spare "
                      "the agent, and runs spawn through a shell from now on")
        return False

    def _limit_hierarchy(
        self, found: list[Hierarchy], controller: str, ok: Callable[[Hierarchy], bool]
    ) -> Hierarchy | None:
        """Where ``controller``'s limits go: v2 if it can enable it there, else v1."""
        v2 = [h for h in found if h.version == 2 and controller in h.controllers]
        v1 = [h for h in found if h.version == 1 and controller in h.controllers]
        if v2 and ok(v2[0]) and self._v2_enables(v2[0], controller):
            return v2[0]
        if v1 and ok(v1[0]):
            return v1[0]
        return None

    def _v2_enables(self, hierarchy: Hierarchy, controller: str) -> bool:
        try:
            cgroups.make_dirs(hierarchy, self.node)
        except OSError:
            return False
        try:
            return cgroups.enable_v2_controller(hierarchy, self.node, controller)
        finally:
            cgroups.remove_node_dir_if_empty(hierarchy, self.node)

    # ---- queries ----------------------------------------------------------

    @property
    def uses_cgroups(self) -> bool:
        return self.kill_hierarchy is not None

    def describe(self) -> str:
        """One line for logs: what contains this node's tasks."""
        if self.kill_hierarchy is None:
            return f"per-task subreaper ({self.why_not_cgroups}); no memory or pids limits"
        limits = ", ".join(f"{c} via {h.describe()}" for c, h in sorted(self.limits.items()))
        born = "; unlimited runs spawned inside their group" if self.home is not None else ""
        return f"cgroup {self.kill_hierarchy.describe()}; limits: {limits or 'none available'}{born}"

    def limit_refusal(self, mem: int, pids: int) -> str | None:
        """Why a task with these limits cannot run here (one line), or None if it can."""
        if not mem and not pids:
            return None
        for controller, value, shown in (
            ("memory", mem, f"--mem {format_size(mem)}"),
            ("pids", pids, f"--pids {pids}"),
        ):
            if value and controller not in self.limits:
                where = self.why_not_cgroups or f"no usable {controller} hierarchy under {self.cgroup_root}"
                return (
                    f"{shown} needs the {controller} cgroup controller, which this host cannot "
                    f"use ({where}); refusing to run the task unlimited"
                )
        return None

    # ---- lifecycle --------------------------------------------------------

    def prepare(self, task_id: str, epoch: int, mem: int = 0, pids: int = 0) -> Jail:
        """The jail for one run; raises TaskError (one line) if it cannot be made."""
        refusal = self.limit_refusal(mem, pids)
        if refusal is not None:
            raise TaskError(f"task {task_id}: {refusal}")
        if self.kill_hierarchy is None:
            return SubreaperJail()
        wanted = [self.kill_hierarchy]
        for controller, value in (("memory", mem), ("pids", pids)):
            if value and self.limits[controller] not in wanted:
                wanted.append(self.limits[controller])
        name = f"{task_id}-{epoch}"
        try:
            try:
                group = cgroups.create_group([f"{d}/{name}" for d in self._node_dirs(wanted)])
            except FileNotFoundError:  # a node directory was removed under us: again
                self._made.clear()
                group = cgroups.create_group([f"{d}/{name}" for d in self._node_dirs(wanted)])
        except OSError as exc:
            raise TaskError(f"task {task_id}: cannot create its cgroup: {exc}") from exc
        self._live += 1
        jail = CgroupJail(group, self, direct=_direct(self.home, wanted, mem, pids))
        if not mem and not pids:
            return jail
        try:
            for h, directory in zip(wanted, group.dirs, strict=True):
                if mem and self.limits["memory"] is h:
                    cgroups.set_memory_limit(directory, h.version, mem)
                if pids and self.limits["pids"] is h:
                    cgroups.set_pids_limit(directory, pids)
        except OSError as exc:
            jail.settle_sync()
            raise TaskError(f"task {task_id}: cannot set its limits: {exc}") from exc
        return jail

    def _node_dirs(self, wanted: list[Hierarchy]) -> list[str]:
        """This node's directory in each hierarchy of ``wanted``, made if need be."""
        dirs = []
        for h in wanted:
            node_dir = self._made.get(h.mount)
            if node_dir is None:
                node_dir = str(cgroups.make_dirs(h, self.node))
                if h.version == 2:
                    for controller in LIMITED:
                        if self.limits.get(controller) is h:
                            cgroups.enable_v2_controller(h, self.node, controller)
                self._made[h.mount] = node_dir
            dirs.append(node_dir)
        return dirs

    def release(self) -> None:
        """A run's groups are gone (this node's directories stay until ``close``)."""
        self._live = max(0, self._live - 1)

    def close(self) -> None:
        """The executor stops: drop this node's directories unless a run is left."""
        if self._live == 0:
            for h in self._hierarchies:
                cgroups.remove_node_dir_if_empty(h, self.node)
            self._made.clear()

    def cleanup_stale(self) -> list[str]:
        """Kill and remove task groups a previous run of this node left (agent start).

        Returns the directories cleaned.  Only this node's directory is looked at.
        """
        cleaned: list[str] = []
        for h in self._hierarchies:
            for directory in cgroups.stale_groups(h, self.node):
                group = TaskGroup((directory,))
                if not cgroups.kill_until_empty(group, spare=os.getpid()):
                    self.warn(f"stale cgroup {directory}: processes survived the kill")
                if cgroups.remove_group(group):
                    self.warn(f"could not remove stale cgroup {directory}")
                cleaned.append(str(directory))
            if self._live == 0:
                cgroups.remove_node_dir_if_empty(h, self.node)
                self._made.pop(h.mount, None)
        if cleaned:
            self.warn(f"killed and removed {len(cleaned)} stale task cgroup(s) of node "
                      f"{self.node}, e.g. {cleaned[0]}")
        return cleaned


def _drop_dirs(dirs: tuple[Path, ...]) -> None:
    for directory in dirs:  # (never one holding a run's group: rmdir refuses)
        with contextlib.suppress(OSError):
            directory.rmdir()


def _direct(home: Path | None, wanted: list[Hierarchy], mem: int, pids: int) -> bool:
    """May a run in ``wanted`` with these limits be spawned from inside its group?"""
    return home is not None and len(wanted) == 1 and not mem and not pids


def _setpriv_argv(setpriv: str | None, user: pwd.struct_passwd) -> list[str]:
    return [str(setpriv), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


def usage_pids(pids: Sequence[int]) -> tuple[float, int, int] | None:
    """(CPU seconds, RSS bytes, process count) summed over ``pids``; None if none lives."""
    import psutil

    cpu, rss, count = 0.0, 0, 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                mem = proc.memory_info()
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += int(mem.rss)
            count += 1
    return (cpu, rss, count) if count else None


FOUND_FOR_S = 1.0
"""Seconds a command name found on a PATH is taken as found again without a search
(default 1 s): a burst of runs of one command searches once.  A command removed in
that second starts its join shim, which exits 127 as a missing command's run does."""
_found: dict[tuple[str, str], tuple[float, str]] = {}


def locate(command: str, path: str, cwd: str, now: float | None = None) -> str | None:
    """What ``execvp`` would run for ``command``: ``command`` itself when it names a
    path (relative to ``cwd``), else where it was found on ``path``; None if nowhere."""
    if "/" in command:
        return command if os.access(os.path.join(cwd, command), os.X_OK) else None
    now = time.monotonic() if now is None else now
    key = (command, path)
    at, where = _found.get(key, (-FOUND_FOR_S, ""))
    if now - at < FOUND_FOR_S:
        return where
    found = shutil.which(command, path=path)
    if found is None:
        _found.pop(key, None)
        return None
    if len(_found) >= 256:
        _found.clear()
    _found[key] = (now, found)
    return found
