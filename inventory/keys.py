"""``meshtui keys list|install|use|remove -i INVENTORY``: rotate the cluster key everywhere.

Rotation is install (every host) → use (every host) → remove (every host),
the order ``agent.crypto`` is built for: every installed key opens packets,
only the primary seals, so no packet is refused at any point.

What each action does, per selected host (all in parallel):

* ``install [KEY]`` (a new key is generated when none is given): write
  ``<mesh_config_dir>/keyring/<id>.key`` (0600) and run ``meshtui keys
  install --key-file`` on it against the host's agent (keys never go in argv).
* ``use ID``: copy the old primary into ``keyring/`` (so the host, restarted
  before ``remove``, still opens packets from hosts not switched yet), write
  the key over ``cluster.key`` (so a restarted agent seals with it), install it
  into the running agent again and run ``meshtui keys use ID``.  An agent loads
  ``cluster.key`` as its primary and every ``keyring/*.key`` beside it.
* ``remove ID``: delete ``keyring/<id>.key`` and run ``meshtui keys remove ID``;
  the primary cannot be removed.
* ``list``: ``meshtui keys list --json`` (ids only, never keys).

On the operator's machine the cluster key file (see ``inventory.clusterkey``)
stays the primary, and installed keys live in ``<keyfile>.d/<id>.key`` so that
``use`` and later deploys write the right key.  Every action is idempotent: a
host that was down is reported ``failed`` and the same command finishes it
later.  A host whose agent is not running gets its files updated and is
reported ``changed`` with a note; its agent picks the primary up from
``cluster.key`` when it starts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from agent.crypto import decode_key, generate_key
from agent.errors import ConfigError
from inventory import agentfiles as files
from inventory.clusterkey import key_id_of, key_path_for, load_or_create_key, read_key, write_key
from inventory.deploy import DEFAULT_PARALLEL, for_each_host
from inventory.hostvars import Host
from inventory.loader import Inventory
from inventory.progress import CHANGED, DeployReport, HostOutcome, Progress
from inventory.remote import StepError, connect

ACTIONS = ("list", "install", "use", "remove")
EXIT_CANNOT_CONNECT = 4


def ring_dir(key_path: str) -> Path:
    return Path(key_path + ".d")


def _local_key(key_path: str, kid: str) -> str:
    primary = load_or_create_key(key_path)
    if key_id_of(primary) == kid:
        return primary
    candidate = ring_dir(key_path) / f"{kid}.key"
    if not candidate.is_file():
        raise ConfigError("key", f"key {kid} is not installed (no {candidate}); run keys install")
    return read_key(str(candidate))


async def keys_command(
    action: str,
    inv: Inventory,
    limit: str | None,
    progress: Progress,
    key: str | None = None,
    *,
    parallel: int = DEFAULT_PARALLEL,
) -> DeployReport:
    """Run a key action over the selected hosts; ``key`` is the key (install) or id (use/remove)."""
    if action not in ACTIONS:
        raise ConfigError("keys", f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
    hosts = inv.select(limit)
    key_paths = {key_path_for(inv, h) for h in hosts}
    if len(key_paths) > 1 and action != "list":
        raise ConfigError("mesh_cluster_key_file", "the selected hosts use different key files; use --limit")
    key_path = key_paths.pop() if key_paths else inv.default_key_path
    key_text, kid = "", ""
    if action == "install":
        key_text = (key or generate_key()).strip()
        decode_key(key_text)
        kid = key_id_of(key_text)
        ring = ring_dir(key_path)
        ring.mkdir(mode=0o700, exist_ok=True)
        if key_id_of(load_or_create_key(key_path)) != kid:
            write_key(str(ring / f"{kid}.key"), key_text)
    elif action in ("use", "remove"):
        if not key:
            raise ConfigError("KEY_ID", f"required for keys {action}")
        kid = key.strip().lower()
        if action == "use":
            key_text = _local_key(key_path, kid)
        elif key_id_of(load_or_create_key(key_path)) == kid:
            raise ConfigError("keys", f"key {kid} is the primary; keys use another key first")

    async def one(host: Host) -> HostOutcome:
        async with connect(host) as remote:
            q = shlex.quote
            ring = f"{host.config_dir}/keyring"
            if action == "list":
                done = await remote.run(files.meshtui_command(host, "keys", "list", "--json"), "keys list")
                return HostOutcome(host.name, "listed", _describe_keys(done.stdout))
            # Keys reach the agent through a 0600 file, never argv (which `ps` shows).
            argv: tuple[str, ...]
            if action == "install":
                await remote.write_file(f"{ring}/{kid}.key", (key_text + "\n").encode(), 0o600, "write key")
                argv = ("keys", "install", "--key-file", f"{ring}/{kid}.key")
            elif action == "use":
                # The old primary stays in keyring/ (until ``remove``) so that this host,
                # restarted, still opens packets from hosts not switched yet; the new
                # one is written there too in case ``install`` missed this host.
                old_text = load_or_create_key(key_path)
                await remote.write_file(
                    f"{ring}/{key_id_of(old_text)}.key", (old_text + "\n").encode(), 0o600, "keep the old key"
                )
                await remote.write_file(f"{ring}/{kid}.key", (key_text + "\n").encode(), 0o600, "write key")
                await remote.write_file(host.key_path, (key_text + "\n").encode(), 0o600, "write key")
                # An agent restarted since ``install`` may lack the key: install again (a
                # no-op where it is present) so ``use`` cannot fail on it.
                await remote.run(
                    files.meshtui_command(host, "keys", "install", "--key-file", host.key_path),
                    "keys install",
                    check=False,
                )
                argv = ("keys", "use", kid)
            else:
                await remote.run(f"rm -f {q(f'{ring}/{kid}.key')}", "remove key file")
                listed = await remote.run(
                    files.meshtui_command(host, "keys", "list", "--json"), "keys list", check=False
                )
                if listed.exit_status == 0 and kid not in _key_ids(listed.stdout):
                    return HostOutcome(host.name, CHANGED, f"{kid} was already removed")
                argv = ("keys", "remove", kid)
            done = await remote.run(files.meshtui_command(host, *argv), f"keys {action}", check=False)
            if done.exit_status == 0:
                return HostOutcome(host.name, CHANGED, f"{action} {kid}")
            if done.exit_status == EXIT_CANNOT_CONNECT:
                return HostOutcome(
                    host.name, CHANGED, f"{action} {kid}: files updated; the agent is not running"
                )
            reason = (done.stderr or done.stdout).strip() or f"exit {done.exit_status}"
            raise StepError(f"keys {action}", reason)

    outcomes = await for_each_host(hosts, progress, one, parallel)
    report = DeployReport(f"keys {action}", tuple(outcomes))
    if action == "use" and report.exit_code == 0:
        old = load_or_create_key(key_path)
        ring = ring_dir(key_path)
        ring.mkdir(mode=0o700, exist_ok=True)
        write_key(str(ring / f"{key_id_of(old)}.key"), old)
        write_key(key_path, key_text)
        (ring / f"{kid}.key").unlink(missing_ok=True)
    if action == "remove" and report.exit_code == 0:
        (ring_dir(key_path) / f"{kid}.key").unlink(missing_ok=True)
    return report


def _key_rows(text: str) -> list[tuple[str, bool]] | None:
    """(id, primary) per key from ``meshtui keys list --json``; None if unreadable."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    keys = value.get("keys", []) if isinstance(value, dict) else value
    if not isinstance(keys, list):
        return None
    return [
        (str(item.get("id") or item.get("key_id") or "?"), bool(item.get("primary")))
        for item in keys
        if isinstance(item, dict)
    ]


def _key_ids(text: str) -> list[str]:
    return [kid for kid, _ in _key_rows(text) or []]


def _describe_keys(text: str) -> str:
    """``keys 1a2b3c4d*, 5e6f7a8b`` (``*`` marks the primary)."""
    rows = _key_rows(text)
    if rows is None:
        return text.strip()
    shown = [kid + ("*" if primary else "") for kid, primary in rows]
    return "keys " + ", ".join(shown) if shown else "no keys"
