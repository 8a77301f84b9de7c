"""Issue 14: the lines of one event-loop pass reach the task watchdog in one write,
and they still work: runs registered that way are killed when the agent goes."""

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
        await lease.close()  # EOF: the watchdog kills what is registered
        return writes

    try:
        writes = asyncio.run(scenario())
        assert writes == [b"".join(f"add {r.pid}\n".encode() for r in runs)
                          + f"del {runs[2].pid}\n".encode()]
        wait_until("the registered runs are killed",
                   lambda: runs[0].poll() is not None and runs[1].poll() is not None,
                   10.0)
        assert runs[2].poll() is None  # unregistered: left alone
    finally:
        for run in runs:
            run.kill()
            run.wait()
