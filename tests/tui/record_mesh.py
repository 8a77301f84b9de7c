"""Records a real 3-agent loopback mesh into a replay fixture (``tests/tui/fixtures/<name>``).

Nothing is scripted by hand: three ``mesh-agent`` processes (``LocalMesh``), a
control client attached to a follower exactly as the TUI attaches, and a short
story driven through the control API -- a multi-line command, a failing task,
short tasks, a drain and undrain, then a SIGKILL of the leader and the election
that follows.  What the client saw is written in the replay client's format
(see ``replay_client.py``): every snapshot method's reply each step with how many
events came before it, the event stream with each event's receive time as ``at``
when it has none, the task logs, and the ``consensus.log`` backfill taken right
after subscribing.

Run it again after changing the agent's shapes (needs the heavy-run lock)::

    flock /work/shared_notes/heavy.lock .venv/bin/python tests/tui/record_mesh.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from meshtui.client import ControlClient  # noqa: E402
from meshtui.demo import LocalMesh  # noqa: E402
from meshtui.model import TOPICS  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SNAPSHOT_METHODS = ("status", "members", "task.list", "proposal.list", "consensus.progress")
MULTILINE = (
    "import time\nprint('multi-line command', flush=True)\nend = time.time() + 2\n"
    "while time.time() < end: pass\nprint('done')"
)


def _plain(value: Any) -> Any:
    """JSON-safe: bytes become text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Recorder:
    def __init__(self, client: ControlClient) -> None:
        self.client = client
        self.snapshots: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    async def snapshot(self) -> None:
        # Where this snapshot sits in the stream: the replay delivers the events seen
        # before it, and no later ones, before answering with it (ReplayClient).
        snap: dict[str, Any] = {"_events_before": len(self.events)}
        for method in SNAPSHOT_METHODS:
            try:
                snap[method] = _plain(await self.client.call(method))
            except Exception as exc:  # a method this agent lacks: the replay says so too
                print(f"  {method}: {exc}", file=sys.stderr)
        self.snapshots.append(snap)

    async def listen(self) -> None:
        sub = await self.client.subscribe(list(TOPICS))
        self.snapshots[0]["consensus.log"] = _plain(await self.client.call("consensus.log", limit=200))
        async for event in sub:
            data = _plain(event.get("data") or {})
            if event.get("event") == "metrics":
                continue  # per-second samples: noise for a screen test
            data.setdefault("at", round(time.time(), 3))
            self.events.append({"event": event["event"], "data": data})


async def wait_tasks_done(client: ControlClient, ids: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = {r["id"]: r for r in await client.call("task.list")}
        if all(rows.get(i, {}).get("state") in ("succeeded", "failed", "cancelled", "lost") for i in ids):
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"tasks {ids} did not finish")


async def wait_leader(client: ControlClient, not_this: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = (await client.call("status"))["consensus"]["leader"]
        if leader and leader != not_this:
            return str(leader)
        await asyncio.sleep(0.2)
    raise TimeoutError("no new leader")


async def record(mesh: LocalMesh) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    leader = ""
    for node in mesh.nodes:
        probe = await ControlClient.connect_unix(node.socket_path)
        leader = (await probe.call("status"))["consensus"]["leader"] or ""
        await probe.close()
        if leader:
            break
    attached = next(n for n in mesh.nodes if n.name != leader)
    print(f"leader {leader}; attaching to {attached.name}", file=sys.stderr)
    client = await ControlClient.connect_unix(attached.socket_path)
    rec = Recorder(client)
    await rec.snapshot()
    listener = asyncio.create_task(rec.listen())
    await asyncio.sleep(0.5)

    def submit(**params: Any) -> Any:
        rid = f"rec-{time.monotonic_ns()}"
        return client.call("task.submit", {"rid": rid, "restartable": True, **params})

    ids = [(await submit(argv=["python3", "-c", MULTILINE]))["id"]]
    ids.append((await submit(shell="echo about to fail; echo 'bad input' >&2; exit 3"))["id"])
    for i in range(4):
        ids.append((await submit(shell=f"for s in 1 2 3; do echo task{i} step $s; sleep 0.3; done"))["id"])
    await wait_tasks_done(client, ids)
    await rec.snapshot()
    other = next(n.name for n in mesh.nodes if n.name not in (leader, attached.name))
    await client.call("node.drain", node=other, rid="rec-drain")
    await asyncio.sleep(1.5)
    await rec.snapshot()
    await client.call("node.undrain", node=other, rid="rec-undrain")
    await asyncio.sleep(1.0)
    await rec.snapshot()
    mesh.kill(leader)
    new_leader = await wait_leader(client, leader)
    print(f"killed {leader}; {new_leader} leads", file=sys.stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the attached agent calls the old leader dead
        rows = {m["name"]: m for m in await client.call("members")}
        if rows.get(leader, {}).get("state") == "dead":
            break
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)
    await rec.snapshot()
    logs: dict[str, Any] = {}
    for tid in ids:
        logs[tid] = {}
        for stream in ("stdout", "stderr"):
            reply = await client.call("task.logs", id=tid, stream=stream, offset=0)
            logs[tid][stream] = _plain(reply.get("data") or b"")
    listener.cancel()
    await client.close()
    return rec.snapshots, rec.events, logs


def main(name: str = "mesh3") -> None:
    with tempfile.TemporaryDirectory(prefix="meshtui-record-") as tmp:
        mesh = LocalMesh(3, base_dir=Path(tmp), slots=2)
        mesh.start()
        try:
            assert mesh.wait_ready(20) and mesh.wait_voters(3, 30), "the mesh did not form"
            snapshots, events, logs = asyncio.run(record(mesh))
        finally:
            mesh.stop()
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "snapshots.json").write_text(json.dumps(snapshots, indent=1) + "\n")
    (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (out / "logs.json").write_text(json.dumps(logs, indent=1) + "\n")
    print(f"wrote {out}: {len(snapshots)} snapshots, {len(events)} events, {len(logs)} task logs")


if __name__ == "__main__":
    main(*sys.argv[1:])
