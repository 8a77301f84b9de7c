"""Network-namespace lab for multi-host tests (root only).

Theory of operation
-------------------
``NetnsLab(n)`` builds, for a run-unique suffix ``k`` (6 hex digits)::

    mt-lab<k>   a namespace holding only the bridge mt-br<k> (nothing on the host's
                own interfaces is touched)
    mt-h<k>-<i> one namespace per host i (0-based): lo up, eth0 = veth into the
                bridge (lab side v<i>), 198.18.0.(10+i)/24, multicast on, and a
                224.0.0.0/4 route so mDNS works across the bridge

Two labs never collide: every device name lives inside its own namespace and
the namespaces carry ``k``.  Faults:

* ``partition(groups)`` / ``one_way(a, b)`` / ``heal()``: nft drop rules in
  table ``inet mt`` inside the host namespaces (input *and* output, so both
  directions drop even for multicast).
* ``netem(host, delay_ms, jitter_ms, loss_pct)`` / ``clear_netem(host)``:
  ``tc qdisc replace dev eth0 root netem`` in the host namespace.  When the
  kernel has no sch_netem, the same egress impairment is applied by
  ``wire_relay.py`` spliced between the host's veth and the bridge
  (``netem_backend`` says which one is in use).

Cleanup is guaranteed three ways: ``__exit__``, an ``atexit`` hook, and
``cleanup_stale()`` (run when a lab starts), which removes namespaces of labs
whose owner process is dead.  Each lab records its owner pid in
``/run/mt-netns/<k>``; a live lab of a parallel run is never removed.  Every
wait here is bounded in time (``support.wait.wait_until``) and every retry loop
in count.

Stale labs of dead owners can be removed by hand, from ``tests/``:
``python -m netns.harness --cleanup`` (``--all`` removes live labs too).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
from support.sshd import PRIVSEP_DIR, SSHD, ssh_keygen, sshd_config
from support.wait import wait_until

SUBNET = "198.18.0"
FIRST_HOST_OCTET = 10
OWNER_DIR = Path("/run/mt-netns")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_LAB_NAME = re.compile(r"^mt-(?:lab|br)([0-9a-f]{6})$|^mt-h([0-9a-f]{6})-\d+$")
RELAY_SCRIPT = Path(__file__).with_name("wire_relay.py")
LAB_SSHD_CONFIG = (
    "AllowStreamLocalForwarding yes",
    "StreamLocalBindUnlink yes",
    "AllowTcpForwarding yes",
    "LogLevel VERBOSE",
)
"""What a lab host's sshd allows beyond key-only root login: ``meshtui attach``'s
direct-streamlocal channels and TCP forwarding."""

T = TypeVar("T")


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _owner_record() -> str:
    """``pid start-time``: a recycled pid is not mistaken for a live owner."""
    return f"{os.getpid()} {psutil.Process().create_time()!r}\n"


def _owner_alive(suffix: str) -> bool:
    try:
        pid_text, started = (OWNER_DIR / suffix).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    try:
        return repr(psutil.Process(pid).create_time()) == started
    except psutil.NoSuchProcess:
        return False


def _kill_namespace_processes(ns: str) -> None:
    for _ in range(5):  # bounded: processes may fork while we kill
        pids = [int(p) for p in sh(["ip", "netns", "pids", ns], check=False).split()]
        pids = [p for p in pids if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    sh(["ip", "netns", "del", ns], check=False)


def cleanup_stale(everything: bool = False) -> list[str]:
    """Remove ``mt-*`` namespaces left by crashed runs; return their names.

    Namespaces of a lab whose owner pid is alive are kept.  ``mt-*`` names this
    harness did not create are only removed with ``everything=True``.
    """
    removed = []
    for ns in list_namespaces():
        if not ns.startswith("mt-"):
            continue
        match = _LAB_NAME.match(ns)
        if match is None:
            if not everything:
                continue
        elif _owner_alive(match.group(1) or match.group(2)):
            continue
        delete_namespace(ns)
        removed.append(ns)
    if OWNER_DIR.is_dir():
        for owner in OWNER_DIR.iterdir():
            if not _owner_alive(owner.name):
                owner.unlink(missing_ok=True)
                # The crashed lab's work directory (sshd configs, logs) goes too.
                for workdir in Path(tempfile.gettempdir()).glob(f"mt-lab{owner.name}-*"):
                    shutil.rmtree(workdir, ignore_errors=True)
    return removed


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a short-lived thread that has entered network namespace ``ns``.

    Sockets created there stay in that namespace, so a test can hand one to an
    asyncio/asyncssh client running in the root namespace.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_ping(
    sock: socket.socket, addr: str, count: int, timeout: float, interval: float
) -> list[float | None]:
    """Send ``count`` ICMP echo requests on raw ``sock``; RTT per probe or None."""
    ident = secrets.randbits(16)
    rtts: list[float | None] = []
    with sock:
        for seq in range(count):
            payload = secrets.token_bytes(16)
            header = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
            csum = _inet_checksum(header + payload).to_bytes(2, "big")
            packet = header[:2] + csum + header[4:] + payload
            sent = time.monotonic()
            rtt: float | None = None
            try:
                sock.sendto(packet, (addr, 0))
            except OSError:  # an nft output drop refuses with EPERM: the probe is lost
                rtts.append(None)
                continue
            deadline = sent + timeout
            for _ in range(1000):  # bounded: stray ICMP traffic is skipped
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    data, (src, _) = sock.recvfrom(2048)
                except TimeoutError:
                    break
                icmp = data[(data[0] & 0x0F) * 4 :]
                if (src == addr and icmp[0] == 0 and icmp[4:6] == ident.to_bytes(2, "big")
                        and icmp[6:8] == seq.to_bytes(2, "big") and icmp[8:] == payload):
                    rtt = time.monotonic() - sent
                    break
            rtts.append(rtt)
            if interval and seq + 1 < count:
                time.sleep(interval)
    return rtts


class NetnsLab:
    """N hosts on one bridge, each in its own network namespace (see module doc)."""

    def __init__(
        self, hosts: int, *, clean_stale: bool = True, netem_backend: str | None = None
    ) -> None:
        """``netem_backend``: None detects ("tc" if the kernel has sch_netem, else
        "relay"); pass "relay" to force the userspace wire."""
        if not 1 <= hosts <= 200:
            raise ValueError("hosts must be 1..200")
        if netem_backend not in (None, "tc", "relay"):
            raise ValueError("netem_backend must be None, 'tc' or 'relay'")
        self.size = hosts
        self.clean_stale = clean_stale
        self.suffix = ""
        self.lab_ns = ""
        self.bridge = ""
        self.workdir = Path()
        self.netem_backend: str | None = netem_backend
        self._procs: list[subprocess.Popen[Any]] = []
        self._relays: dict[int, subprocess.Popen[Any]] = {}
        self._namespaces: list[str] = []
        self._closed = True

    # ---- names ----------------------------------------------------------

    def ns(self, host: int) -> str:
        self._check_host(host)
        return f"mt-h{self.suffix}-{host}"

    def addr(self, host: int) -> str:
        self._check_host(host)
        return f"{SUBNET}.{FIRST_HOST_OCTET + host}"

    @property
    def hosts(self) -> range:
        return range(self.size)

    def _check_host(self, host: int) -> None:
        if not 0 <= host < self.size:
            raise ValueError(f"no host {host} in a lab of {self.size}")

    # ---- lifecycle --------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.clean_stale:
            cleanup_stale()
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # bounded: a suffix collision is already unlikely
            suffix = secrets.token_hex(3)
            owner = OWNER_DIR / suffix
            try:
                fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            os.write(fd, _owner_record().encode())
            os.close(fd)
            self.suffix = suffix
            break
        else:
            raise LabError("could not reserve a lab suffix in 20 attempts")
        self._closed = False
        atexit.register(self.close)
        self.lab_ns = f"mt-lab{self.suffix}"
        self.bridge = f"mt-br{self.suffix}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mt-lab{self.suffix}-"))
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _build(self) -> None:
        lab = self.lab_ns
        self._add_ns(lab)
        # The bridge namespace stays silent (no IPv6 autoconf chatter); plain
        # /proc writes, because a CI image need not ship procps' sysctl.
        sh(["ip", "netns", "exec", lab, "sh", "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"])
        sh(["ip", "-n", lab, "link", "add", self.bridge, "type", "bridge",
            "stp_state", "0", "mcast_snooping", "0"])
        sh(["ip", "-n", lab, "link", "set", self.bridge, "up"])
        for host in self.hosts:
            ns = self.ns(host)
            self._add_ns(ns)
            sh(["ip", "link", "add", f"v{host}", "netns", lab, "type", "veth",
                "peer", "name", "eth0", "netns", ns])
            sh(["ip", "-n", lab, "link", "set", f"v{host}", "master", self.bridge, "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "multicast", "on", "up"])
            sh(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
        self._wait_links_up()

    def _wait_links_up(self) -> None:
        def pending() -> list[int]:
            return [
                h for h in self.hosts
                if "LOWER_UP" not in sh(["ip", "-n", self.ns(h), "link", "show", "eth0"])
            ]

        wait_until("every host's eth0 to be LOWER_UP", lambda: not pending(), 10,
                   detail=lambda: f"still down: {pending()}")

    def kill_all(self) -> None:
        """Kill every process started through the lab and every process in its namespaces."""
        for proc in [*self._procs, *self._relays.values()]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in [*self._procs, *self._relays.values()]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        self._relays.clear()
        for ns in self._namespaces:
            _kill_namespace_processes(ns)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        self.kill_all()
        for ns in reversed(self._namespaces):
            delete_namespace(ns)
        self._namespaces.clear()
        (OWNER_DIR / self.suffix).unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- running things ----------------------------------------------------

    def _argv(self, host: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(
        self, host: int, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """``ip netns exec`` a command to completion (text, captured, 60 s timeout)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self._argv(host, argv), **kwargs)

    def popen(self, host: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in ``host``'s namespace (own process group; killed by kill_all)."""
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(host, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def socket(
        self,
        host: int,
        family: int = socket.AF_INET,
        kind: int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A socket created inside ``host``'s namespace (usable from this process)."""
        return in_netns(self.ns(host), lambda: socket.socket(family, kind, proto))

    def ping(
        self, src: int, dst: int, count: int = 1, timeout: float = 1.0, interval: float = 0.0
    ) -> list[float | None]:
        """ICMP echo from ``src`` to ``dst``: the RTT in seconds of each probe, None if lost.

        Raw ICMP from this process (the CI image need not ship iputils).
        """
        return icmp_ping(self.socket(src, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                         self.addr(dst), count, timeout, interval)

    def wait_tcp(self, host: int, addr: str, port: int, timeout: float = 10.0) -> None:
        """Wait until ``addr:port`` accepts a TCP connection as seen from ``host``."""

        def accepts() -> bool:
            sock = self.socket(host)
            try:
                sock.settimeout(0.5)
                sock.connect((addr, port))
            except OSError:
                return False
            finally:
                sock.close()
            return True

        wait_until(f"{addr}:{port} to accept a connection from host {host}", accepts, timeout)

    # ---- faults: nft -----------------------------------------------------------

    def _nft(self, host: int, script: str) -> None:
        proc = self.run(host, ["nft", "-f", "-"], input=script)
        if proc.returncode != 0:
            raise LabError(f"nft on host {host}: {proc.stderr.strip()}\n{script}")

    def _set_drops(self, host: int, drop_from: list[int], drop_to: list[int]) -> None:
        rules = ["table inet mt", "delete table inet mt", "table inet mt {"]
        rules.append("  chain input { type filter hook input priority -10; policy accept;")
        if drop_from:
            rules.append(f"    ip saddr {{ {', '.join(self.addr(h) for h in drop_from)} }} drop")
        rules.append("  }")
        rules.append("  chain output { type filter hook output priority -10; policy accept;")
        if drop_to:
            rules.append(f"    ip daddr {{ {', '.join(self.addr(h) for h in drop_to)} }} drop")
        rules.append("  }")
        rules.append("}")
        self._nft(host, "\n".join(rules) + "\n")

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Cut traffic between groups (both ways); hosts in no group stay connected to all."""
        member = {h: g for g, group in enumerate(groups) for h in group}
        if len(member) != sum(len(g) for g in groups):
            raise ValueError("a host appears in two groups")
        for host in self.hosts:
            if host not in member:
                self._set_drops(host, [], [])
                continue
            others = [h for h in member if member[h] != member[host]]
            self._set_drops(host, others, others)

    def one_way(self, a: int, b: int) -> None:
        """Drop packets from ``a`` to ``b`` (b's input); b -> a still flows."""
        self._set_drops(b, [a], [])

    def heal(self) -> None:
        for host in self.hosts:
            self._nft(host, "table inet mt\ndelete table inet mt\n")

    # ---- faults: netem -----------------------------------------------------------

    def _netem_supported(self) -> bool:
        if self.netem_backend is None:
            probe = self.run(0, ["tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                 "delay", "1ms"])
            if probe.returncode == 0:
                self.run(0, ["tc", "qdisc", "del", "dev", "lo", "root"])
                self.netem_backend = "tc"
            elif any(m in probe.stderr.lower() for m in ("unknown", "not found", "no such file")):
                # No sch_netem in this kernel (message differs across iproute2 versions).
                self.netem_backend = "relay"
            else:
                raise LabError(f"tc netem probe failed: {probe.stderr.strip()}")
        return self.netem_backend == "tc"

    def netem(
        self, host: int, delay_ms: float = 0.0, jitter_ms: float = 0.0, loss_pct: float = 0.0
    ) -> None:
        """Delay (± uniform jitter) and drop packets leaving ``host``."""
        self.clear_netem(host)
        if self._netem_supported():
            argv = ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                    "delay", f"{delay_ms}ms", f"{jitter_ms}ms"]
            if loss_pct:
                argv += ["loss", f"{loss_pct}%"]
            proc = self.run(host, argv)
            if proc.returncode != 0:
                raise LabError(f"tc netem on host {host}: {proc.stderr.strip()}")
            return
        self._start_relay(host, delay_ms, jitter_ms, loss_pct)

    def clear_netem(self, host: int) -> None:
        if self.netem_backend == "tc":
            self.run(host, ["tc", "qdisc", "del", "dev", "eth0", "root"])
        relay = self._relays.pop(host, None)
        if relay is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(relay.pid, signal.SIGKILL)
        relay.wait(timeout=5)
        lab = self.lab_ns
        sh(["ip", "-n", lab, "link", "del", f"r{host}a"], check=False)
        sh(["ip", "-n", lab, "link", "set", f"v{host}", "promisc", "off", "master", self.bridge])

    def _start_relay(self, host: int, delay_ms: float, jitter_ms: float, loss: float) -> None:
        lab, v, ra, rb = self.lab_ns, f"v{host}", f"r{host}a", f"r{host}b"
        sh(["ip", "-n", lab, "link", "add", ra, "type", "veth", "peer", "name", rb])
        sh(["ip", "-n", lab, "link", "set", v, "nomaster", "promisc", "on"])
        sh(["ip", "-n", lab, "link", "set", ra, "promisc", "on", "up"])
        sh(["ip", "-n", lab, "link", "set", rb, "master", self.bridge, "up"])
        relay = subprocess.Popen(
            ["ip", "netns", "exec", lab, sys.executable, str(RELAY_SCRIPT),
             "--host-if", v, "--bridge-if", ra, "--delay-ms", str(delay_ms),
             "--jitter-ms", str(jitter_ms), "--loss-pct", str(loss)],
            stdout=subprocess.PIPE, start_new_session=True, text=True,
        )
        self._relays[host] = relay
        assert relay.stdout is not None
        line = relay.stdout.readline()  # bounded: the relay prints "ready" or exits
        if line.strip() != "ready":
            raise LabError(f"wire relay for host {host} failed to start")

    # ---- sshd ------------------------------------------------------------------------

    def start_sshd(
        self, host: int, authorized_key: str, host_key_dir: Path, port: int = 22
    ) -> int:
        """Run OpenSSH ``sshd -D`` on ``addr(host):port`` accepting ``authorized_key`` for root.

        ``authorized_key`` is a public key line; ``host_key_dir`` holds (or gets)
        ``ssh_host_ed25519_key``.  Returns the port once sshd accepts connections.
        """
        host_key_dir = Path(host_key_dir)
        host_key_dir.mkdir(parents=True, exist_ok=True)
        host_key = host_key_dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            ssh_keygen(host_key)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        conf_dir = self.workdir / f"sshd-{host}"
        conf_dir.mkdir(mode=0o700, exist_ok=True)
        keys = conf_dir / "authorized_keys"
        keys.write_text(authorized_key.strip() + "\n")
        keys.chmod(0o600)
        config = conf_dir / "sshd_config"
        config.write_text(sshd_config(f"{self.addr(host)}:{port}", host_key, keys, LAB_SSHD_CONFIG))
        log = (conf_dir / "sshd.log").open("w")
        proc = self.popen(host, [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        log.close()
        try:
            self.wait_tcp(host, self.addr(host), port)
        except AssertionError:
            proc.kill()
            raise LabError(
                f"sshd on host {host} did not start: {(conf_dir / 'sshd.log').read_text()}"
            ) from None
        return port


if __name__ == "__main__":
    if "--cleanup" in sys.argv:
        print("\n".join(cleanup_stale(everything="--all" in sys.argv)) or "nothing to remove")
