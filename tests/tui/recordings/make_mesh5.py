"""Writes the ``mesh5`` recording: a 5-node mesh over ~2 minutes, in the control API's shapes.

Hand-scripted (seeded, fixed timestamps) so every screen has something to show:
a leader change with its election and votes, a member going suspect then dead,
tasks from submit to finish, and one migration of each reason.  Run it again
after changing the script: ``python tests/tui/recordings/make_mesh5.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

T0 = 1_790_000_000.0
NAMES = ["n1", "n2", "n3", "n4", "n5"]
CAPS = {"n1": ["ssd"], "n2": ["gpu", "ssd"], "n3": [], "n4": ["gpu"], "n5": ["ssd"]}
RTT = {"n1": None, "n2": 0.41, "n3": 0.83, "n4": 3.2, "n5": 17.5}
HERE = Path(__file__).parent / "mesh5"


def member(name: str, state: str, cpu: float, tasks: int) -> dict[str, Any]:
    i = NAMES.index(name) + 1
    return {
        "name": name,
        "id": f"{i:02d}" + "a" * 30,
        "addr": f"127.0.0.1:79{i:02d}",
        "state": state,
        "incarnation": 1,
        "cpu": round(cpu / 100, 4),  # fractions 0..1, as agent/runtime/views.py sends them
        "mem": round((30.0 + 7 * i) / 100, 4),
        "load1": round(cpu / 25, 2),
        "caps": CAPS[name],
        "slots": 4,
        "tasks": tasks,
        "role": "voter" if i <= 3 else "learner",
        "rtt_ms": RTT[name],
        "version": "0.1.0",
    }


def task(tid: str, state: str, node: str | None, cmd: list[str], **extra: Any) -> dict[str, Any]:
    row = {
        "id": tid,
        "state": state,
        "node": node,
        "epoch": 1,
        "attempts": 1,
        "migrations": 0,
        "exit_code": None,
        "cmd": cmd,
    }
    row.update(extra)
    return row


def main() -> None:
    rng = random.Random(5)
    events: list[dict[str, Any]] = []
    t = T0

    def ev(topic: str, **data: Any) -> None:
        events.append({"event": topic, "data": data})

    def entry(term: int, index: int, summary: str) -> None:
        nonlocal t
        t += 0.7
        ev("consensus", kind="entry", term=term, index=index, summary=summary, at=round(t, 3))

    index = 120
    tasks: dict[str, dict[str, Any]] = {}
    for k in range(6):
        tid = f"t{k:02d}" + "c0ffee" * 2
        cmd = ["python3", "-c", f"burn({k})"]
        tasks[tid] = task(tid, "queued", None, cmd)
        index += 1
        entry(3, index, f"task.submit {tid[:8]} {' '.join(cmd)}")
        ev("tasks", kind="submitted", task=tasks[tid])
        node = NAMES[1 + k % 4]
        tasks[tid] = {**tasks[tid], "state": "assigned", "node": node}
        index += 1
        entry(3, index, f"task.assign {tid[:8]} → {node} (auction)")
        ev("tasks", kind="assigned", task=tasks[tid])
        tasks[tid] = {**tasks[tid], "state": "running"}
        ev("tasks", kind="started", task=tasks[tid])
    # Migrations of every reason.
    moves = [
        ("t01", "n3", "n5", "steal"),
        ("t02", "n4", "n1", "hot-cold"),
        ("t03", "n5", "n2", "drain"),
    ]
    for short, src, dst, reason in moves:
        tid = short + "c0ffee" * 2
        index += 1
        entry(3, index, f"task.migrate {tid[:8]} {src} → {dst} ({reason})")
        epoch = tasks[tid]["epoch"] + 1
        tasks[tid] = {
            **tasks[tid],
            "node": dst,
            "epoch": epoch,
            "migrations": tasks[tid]["migrations"] + 1,
        }
        t += 0.3
        ev(
            "migrations",
            task=tid,
            **{"from": src, "to": dst},
            reason=reason,
            epoch=epoch,
            at=round(t, 3),
        )
    # Two tasks finish.
    for short, code in (("t00", 0), ("t05", 1)):
        tid = short + "c0ffee" * 2
        index += 1
        tasks[tid] = {
            **tasks[tid],
            "state": "succeeded" if code == 0 else "failed",
            "exit_code": code,
        }
        entry(3, index, f"task.finish {tid[:8]} exit {code}")
        ev("tasks", kind="finished", task=tasks[tid])
    # The leader n2 goes quiet: suspect, then an election, then dead and failover.
    ev("members", kind="suspect", member=member("n4", "suspect", 0.0, 1))
    t += 1.2
    ev(
        "consensus",
        kind="election",
        term=4,
        summary="n3 started an election (pre-vote won)",
        at=round(t, 3),
    )
    ev("consensus", kind="vote", term=4, summary="n1 voted for n3", at=round(t + 0.01, 3))
    ev("consensus", kind="vote", term=4, summary="n3 voted for n3", at=round(t + 0.02, 3))
    ev(
        "consensus",
        kind="leader",
        term=4,
        leader="n3",
        summary="elected with 2/3 votes",
        at=round(t + 0.05, 3),
    )
    ev("members", kind="dead", member=member("n4", "dead", 0.0, 0))
    index += 1
    entry(4, index, "noop (new leader)")
    tid = "t04" + "c0ffee" * 2
    epoch = tasks[tid]["epoch"] + 1
    tasks[tid] = {
        **tasks[tid],
        "node": "n5",
        "epoch": epoch,
        "migrations": tasks[tid]["migrations"] + 1,
        "attempts": 2,
    }
    index += 1
    entry(4, index, f"task.migrate {tid[:8]} n4 → n5 (failover, epoch {epoch})")
    t += 0.2
    ev(
        "migrations",
        task=tid,
        **{"from": "n4", "to": "n5"},
        reason="failover",
        epoch=epoch,
        at=round(t, 3),
    )
    ev("tasks", kind="assigned", task=tasks[tid])
    for k in range(8):
        index += 1
        entry(4, index, f"kv.put ns=app key=k{k} ({rng.randint(8, 900)} bytes)")

    # 30 polls of members with load drifting; the last one matches the end of the stream.
    snapshots = []
    for poll in range(30):
        last = poll == 29
        rows = []
        for name in NAMES:
            base = {"n1": 22, "n2": 64, "n3": 41, "n4": 86, "n5": 12}[name]
            cpu = max(0.0, min(100.0, base + rng.uniform(-15, 15) + (poll if name == "n5" else 0)))
            state = "dead" if (last and name == "n4") else "alive"
            if state == "dead":
                cpu = 0.0
            rows.append(
                member(
                    name,
                    state,
                    round(cpu, 1),
                    sum(1 for tk in tasks.values() if tk["node"] == name),
                )
            )
        leader = "n3" if last else "n2"
        term = 4 if last else 3
        status = {
            "node": "n1",
            "members": [
                {
                    k: r[k]
                    for k in (
                        "name",
                        "id",
                        "addr",
                        "state",
                        "cpu",
                        "mem",
                        "caps",
                        "tasks",
                        "role",
                        "rtt_ms",
                    )
                }
                for r in rows
            ],
            "consensus": {
                "engine": "raft",
                "role": "follower",
                "term": term,
                "leader": leader,
                "commit_index": index if last else 120,
                "voters": ["n1", "n2", "n3"],
            },
            "tasks": {"queued": 0, "running": 4, "done": 1, "failed": 1}
            if last
            else {"queued": 0, "running": 0, "done": 0, "failed": 0},
            "partitioned": False,
            "read_only": False,
            "cluster_avg_cpu": round(sum(r["cpu"] for r in rows) / len(rows), 4),
        }
        # The 29 polls before the stream, the last one after it (ReplayClient ``ordered``).
        snap: dict[str, Any] = {"_events_before": len(events) if last else 0}
        snap.update(status=status, members=rows)
        if last:
            snap["task.list"] = list(tasks.values())
            snap["proposal.list"] = [
                {
                    "id": "p1",
                    "title": "raise slots on n5 to 8",
                    "threshold": 0.67,
                    "yes": 2,
                    "no": 0,
                    "voters": 3,
                    "state": "open",
                },
                {
                    "id": "p0",
                    "title": "enable gpu cap routing",
                    "threshold": 0.67,
                    "yes": 3,
                    "no": 0,
                    "voters": 3,
                    "state": "passed",
                },
            ]
        else:
            snap["task.list"] = []
            snap["proposal.list"] = []
        snapshots.append(snap)
    logs = {
        "t00" + "c0ffee" * 2: {
            "stdout": "starting burn(0)\n" + "".join(f"step {i}: {i * i}\n" for i in range(12)) + "done ✓\n",
            "stderr": "",
        },
        "t05" + "c0ffee" * 2: {
            "stdout": "starting burn(5)\n",
            "stderr": "Traceback (most recent call last):\nValueError: 5\n",
        },
    }
    HERE.mkdir(exist_ok=True)
    (HERE / "snapshots.json").write_text(json.dumps(snapshots, indent=1, ensure_ascii=False))
    (HERE / "events.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    (HERE / "logs.json").write_text(json.dumps(logs, indent=1, ensure_ascii=False))
    print(f"wrote {len(snapshots)} snapshots, {len(events)} events to {HERE}")


if __name__ == "__main__":
    main()
