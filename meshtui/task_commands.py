"""The task subcommands of ``meshtui``: submit, list, logs, artifacts, prune, cancel, wait.

Split from ``meshtui.commands`` (which keeps the session plumbing, the table and JSON
printers and the other subcommands); ``meshtui.cli`` looks a command up in both.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Any

from meshtui.commands import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    new_rid,
    print_json,
    print_table,
    with_session,
)
from meshtui.targets import Session


@with_session
def cmd_submit(args: argparse.Namespace, session: Session) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return fail("submit: no command given (usage: meshtui submit [opts] -- CMD...)", EXIT_USAGE)
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return fail(f"submit: --env expects K=V, got {item!r}", EXIT_USAGE)
        env[key] = value
    if args.retries < 0 or args.timeout < 0:
        return fail("submit: --retries and --timeout must be >= 0", EXIT_USAGE)
    strategy = args.strategy or ("hash" if args.key else "auction")
    if strategy == "hash" and not args.key:
        return fail("submit: --strategy hash needs --key", EXIT_USAGE)
    spec: dict[str, Any] = {
        "argv": cmd if len(cmd) > 1 else [],
        "shell": cmd[0] if len(cmd) == 1 else "",
        "env": env,
        "cwd": args.cwd,
        "caps": list(args.caps),
        "key": args.key or "",
        "strategy": strategy,
        "priority": args.priority,
        "retries": args.retries,
        "timeout": float(args.timeout),
        "restartable": bool(args.restartable),
        "mem": int(args.mem),
        "pids": int(args.pids),
        "artifacts": list(args.artifacts),
    }
    if args.count > 1:
        return _submit_copies(session, spec, args.count, args.json)
    result = session.call("task.submit", **spec, rid=new_rid())
    if args.json:
        print_json(result)
    else:
        print(result["id"])
    return EXIT_OK


SUBMIT_MANY_CHUNK = 1024
"""Tasks per ``task.submit_many`` request (the agent's ``MAX_SUBMIT_MANY``)."""


def _submit_copies(session: Session, spec: dict[str, Any], count: int, as_json: bool) -> int:
    """``--count N``: N copies in requests of up to 1,024, each its own task with its
    own rid (a retried request is applied once); one id per line, in order, printed as
    each request commits.  A copy refused on its own is a line on stderr and exit 2;
    the others stand."""
    rows: list[Any] = []
    for start in range(0, count, SUBMIT_MANY_CHUNK):
        chunk = [{**spec, "rid": new_rid()} for _ in range(min(SUBMIT_MANY_CHUNK, count - start))]
        got = session.call("task.submit_many", tasks=chunk)
        rows += got
        ids = [row["id"] for row in got if "id" in row]
        if ids and not as_json:  # a later request that fails leaves these ids printed
            print("\n".join(ids), flush=True)
    refused = [row for row in rows if "id" not in row]
    if as_json:
        print_json(rows)
    for row in refused[:1]:
        print(f"submit: {len(refused)} of {count} refused: {row.get('message')}", file=sys.stderr)
    return EXIT_USAGE if refused else EXIT_OK


@with_session
def cmd_tasks(args: argparse.Namespace, session: Session) -> int:
    rows = session.call("task.list")
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table(
        ["id", "state", "node", "epoch", "attempts", "migrations", "exit", "cmd"],
        [[t["id"], t["state"], t["node"], t["epoch"], t["attempts"], t["migrations"],
          t["exit_code"], t["cmd"][:60]] for t in rows],
    )
    return EXIT_OK


_FINAL_STATES = {"succeeded", "failed", "cancelled", "lost"}


@with_session
def cmd_logs(args: argparse.Namespace, session: Session) -> int:
    """Print one attempt's output; ``--follow`` stays with it through a replica when its
    host dies, then goes on with the next attempt (a line on stderr marks the switch)."""
    stream = "stderr" if args.stderr else "stdout"
    offset, attempt = 0, args.attempt
    out = sys.stdout.buffer
    while True:
        params: dict[str, Any] = {"id": args.task, "offset": offset, "stream": stream}
        if attempt is not None:
            params["attempt"] = attempt
        chunk = session.call("task.logs", **params)
        attempt = chunk.get("epoch", attempt)
        data: bytes = chunk["data"]
        if data:
            out.write(data)
            out.flush()
        offset = chunk["offset"]
        if chunk["eof"] and not data:
            if not args.follow:
                return EXIT_OK
            latest = chunk.get("latest", attempt)
            if attempt is not None and latest is not None and latest > attempt \
                    and args.attempt is None:
                print(f"meshtui: attempt {attempt} ended; following attempt {latest}",
                      file=sys.stderr, flush=True)
                offset, attempt = 0, latest
                continue
            state = chunk.get("state") or session.call("task.get", id=args.task)["state"]
            if state in _FINAL_STATES:
                return EXIT_OK
            time.sleep(0.25)
        elif not data:
            time.sleep(0.25)


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h`` or ``7d`` (``ValueError`` otherwise)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    value = float(text[:-1] if scale is not None else text)
    if value < 0 or value != value:
        raise ValueError(text)
    return value * (scale or 1.0)


@with_session
def cmd_artifacts(args: argparse.Namespace, session: Session) -> int:
    """List a task's artifacts, or fetch one (``--get``) with its SHA-256 checked."""
    extra: dict[str, Any] = {} if args.attempt is None else {"attempt": args.attempt}
    if not args.get:
        listing = session.call("artifact.list", id=args.task, **extra)
        if args.json:
            print_json(listing)
            return EXIT_OK
        print_table(["name", "size", "sha256", "error"],
                    [[i["name"], i["size"] if not i["error"] else "-",
                      i["sha256"][:16] if not i["error"] else "-", i["error"]]
                     for i in listing["items"]])
        return EXIT_OK
    digest, chunks, offset = hashlib.sha256(), [], 0
    while True:
        got = session.call("artifact.get", id=args.task, name=args.get, offset=offset, **extra)
        extra["attempt"] = got["epoch"]
        digest.update(got["data"])
        chunks.append(got["data"])
        offset = got["offset"]
        if got["eof"]:
            break
    if digest.hexdigest() != got["sha256"]:
        return fail(f"artifacts: {args.get}: checksum mismatch (got {digest.hexdigest()}, "
                     f"stored {got['sha256']})", EXIT_NOT_FOUND)
    data = b"".join(chunks)
    if args.output and args.output != "-":
        tmp = f"{args.output}.part"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, args.output)
        if not args.json:
            print(f"{args.get}: {len(data)} bytes, sha256 {got['sha256']} -> {args.output}",
                  file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


@with_session
def cmd_prune(args: argparse.Namespace, session: Session) -> int:
    try:
        seconds = parse_duration(args.older_than)
    except ValueError:
        return fail(f"prune: --older-than {args.older_than!r}: give e.g. 7d, 12h, 30m or 90s",
                     EXIT_USAGE)
    result = session.call("replicas.prune", older_than=seconds)
    if args.json:
        print_json(result)
    else:
        print(f"pruned {result['removed']} item(s) here; every live host prunes its own")
    return EXIT_OK


@with_session
def cmd_cancel(args: argparse.Namespace, session: Session) -> int:
    session.call("task.cancel", id=args.task, rid=new_rid())
    if not args.json:
        print(f"cancelled {args.task}")
    return EXIT_OK


@with_session
def cmd_wait(args: argparse.Namespace, session: Session) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while True:
        task = session.call("task.get", id=args.task)
        if task["state"] in _FINAL_STATES:
            break
        if deadline is not None and time.monotonic() > deadline:
            return fail(f"wait: task {args.task} still {task['state']} after {args.timeout}s", 1)
        time.sleep(0.2)
    if args.json:
        print_json(task)
    else:
        print(f"{task['id']} {task['state']} exit={task.get('exit_code')} node={task.get('node')}")
    return EXIT_OK if task["state"] == "succeeded" else EXIT_NOT_FOUND
