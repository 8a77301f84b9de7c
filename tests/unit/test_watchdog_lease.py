"""Issue 14: the lines of one event-loop pass reach the task watchdog in one write,
and they still work: runs registered that way are killed when the agent goes.  A
removal waits for the next write (a registration, a beat, the close), or for the next
beat tick when there is no quorum to beat for."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from support.wait import wait_until

from agent.runtime.watchdog_lease import WatchdogLease


class Recorder:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return int(self.real.write(data))

    def flush(self) -> None:
        self.real.flush()

    def close(self) -> None:
        self.real.close()


def test_one_pass_is_one_write_and_registered_runs_die_with_the_agent() -> None:
    runs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(3)]

    async def scenario() -> list[bytes]:
        lease = WatchdogLease(30.0, lambda: True)
        lease.start()
        await asyncio.sleep(0)
        assert lease._proc is not None
        recorder = Recorder(lease._proc.stdin)
        lease._proc.stdin = recorder  # type: ignore[assignment]
        for run in runs:
            lease.register(run.pid, (), False)
        lease.unregister(runs[2].pid)
        assert not recorder.writes  # not before the end of the pass
        await asyncio.sleep(0)
        writes = list(recorder.writes)
        lease.unregister(runs[1].pid)
        await asyncio.sleep(0)
        assert recorder.writes == writes  # a removal alone wakes nobody
        lease.register(runs[1].pid, (), False)  # (a run of the same id registers again)
        await asyncio.sleep(0)
        writes = list(recorder.writes)
        await lease.close()  # EOF: the watchdog kills what is registered
        return writes

    try:
        writes = asyncio.run(scenario())
        assert writes == [  # (with quorum contact, a registration beats first)
            b"".join(f"beat\nadd {r.pid}\n".encode() for r in runs)
            + f"del {runs[2].pid}\n".encode(),
            f"del {runs[1].pid}\nbeat\nadd {runs[1].pid}\n".encode(),
        ]
        wait_until("the registered runs are killed",
                   lambda: runs[0].poll() is not None and runs[1].poll() is not None,
                   10.0)
        assert runs[2].poll() is None  # unregistered: left alone
    finally:
        for run in runs:
            run.kill()
            run.wait()


def test_removals_go_at_the_next_tick_without_quorum(monkeypatch: Any) -> None:
    from agent.runtime import watchdog_lease

    monkeypatch.setattr(watchdog_lease, "BEAT_INTERVAL_MAX", 0.01)

    async def scenario() -> list[bytes]:
        lease = WatchdogLease(30.0, lambda: False)
        lease.start()
        await asyncio.sleep(0)
        assert lease._proc is not None
        recorder = Recorder(lease._proc.stdin)
        lease._proc.stdin = recorder  # type: ignore[assignment]
        lease.unregister(12345)
        await asyncio.sleep(0.1)
        writes = list(recorder.writes)
        await lease.close()
        return writes

    assert asyncio.run(scenario()) == [b"del 12345\n"]


def test_a_run_registered_with_quorum_contact_renews_the_lease() -> None:
    """The beat loop's first beat may not have gone yet (it samples the contact once per
    interval): a run that starts then must not die at the watchdog's next expiry."""
    quorum = {"now": False}
    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    marker, run = procs

    def dead(proc: subprocess.Popen[bytes]) -> bool:
        return proc.poll() is not None

    async def scenario() -> bool:
        lease = WatchdogLease(1.0, lambda: quorum["now"])
        lease.start()
        await lease.stop_beating()  # only registrations beat here
        lease.register(marker.pid, (), False)  # no contact: dies at an expiry, which it marks
        await asyncio.to_thread(wait_until, "an expiry", lambda: dead(marker), 10.0, 0.01)
        await asyncio.sleep(0.6)
        quorum["now"] = True
        lease.register(run.pid, (), False)  # contact now: the lease runs from here
        await asyncio.sleep(0.7)  # past the next expiry the watchdog counted from the last
        alive = not dead(run)
        await asyncio.to_thread(wait_until, "the lease to lapse", lambda: dead(run), 10.0)
        await lease.close()
        return alive

    try:
        assert asyncio.run(scenario())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
