"""Glue between ``meshtui deploy|undeploy|upgrade|keys -i FILE`` and this package.

``run_inventory_command(name, args)`` loads the inventory, runs the action
with a ``PlainProgress`` (one line per host event on stdout), prints one line
per failed host and a summary, and returns the exit code: 0 when every host
succeeded, 1 when any failed, 2 for a bad inventory, pattern or local setup
(the error is one line on stderr, never a traceback).

``--ask-pass`` / ``--ask-become-pass`` prompt once each (``getpass``: the
terminal, echo off) before anything connects; the answers go to the hosts
that set no ``ansible_password`` / ``ansible_become_password`` of their own,
live only in memory and are never printed.  ``--check [--diff]`` reports
what would change (``inventory.checkmode``); ``--forks N`` bounds how many
hosts are worked on at once (upgrade always goes one host at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import sys

from agent.errors import ConfigError, MeshError
from inventory.deploy import DEFAULT_PARALLEL
from inventory.errors import InventoryError
from inventory.loader import Inventory, load_inventory
from inventory.progress import DeployReport, PlainProgress, QuietProgress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def run_inventory_command(name: str, args: argparse.Namespace) -> int:
    try:
        inv = load_inventory(args.inventory, become_defaults(args))
        limit = getattr(args, "limit", None)
        hosts = [h.name for h in inv.select(limit)]
    except InventoryError as exc:
        sys.stderr.write(f"meshtui: {exc}\n")
        return EXIT_USAGE
    if getattr(args, "diff", False) and not getattr(args, "check", False):
        sys.stderr.write(f"meshtui {name}: --diff is only supported with --check\n")
        return EXIT_USAGE
    try:
        inv = with_credentials(inv, *prompt_secrets(args))
    except (EOFError, KeyboardInterrupt):
        sys.stderr.write(f"meshtui {name}: no password given\n")
        return EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    progress = QuietProgress() if as_json else PlainProgress(sys.stdout, hosts)
    try:
        report = asyncio.run(_dispatch(name, inv, limit, progress, args))
    except ConfigError as exc:
        sys.stderr.write(f"meshtui {name}: {exc}\n")
        return EXIT_USAGE
    except MeshError as exc:
        sys.stderr.write(f"meshtui {name}: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write(f"meshtui {name}: interrupted\n")
        return EXIT_FAILED
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for outcome in report.hosts:
            if outcome.diff:
                sys.stdout.write(outcome.diff)
        for outcome in report.failed:
            sys.stdout.write(f"FAILED {outcome.line()}\n")
        sys.stdout.write(report.summary() + "\n")
    return report.exit_code


async def _dispatch(
    name: str,
    inv: Inventory,
    limit: str | None,
    progress: PlainProgress | QuietProgress,
    args: argparse.Namespace,
) -> DeployReport:
    purge = bool(getattr(args, "purge", False))
    forks = int(getattr(args, "forks", None) or DEFAULT_PARALLEL)
    if getattr(args, "check", False) and name in ("deploy", "upgrade", "undeploy"):
        from inventory.checkmode import check_deploy, check_undeploy

        if name == "undeploy":
            return await check_undeploy(inv, limit, progress, purge, parallel=forks)
        diff = bool(getattr(args, "diff", False))
        return await check_deploy(inv, limit, progress, action=name, diff=diff, parallel=forks)
    if name == "deploy":
        from inventory.deploy import deploy

        return await deploy(inv, limit, progress, purge, parallel=forks)
    if name == "undeploy":
        from inventory.deploy import undeploy

        return await undeploy(inv, limit, progress, purge, parallel=forks)
    if name == "upgrade":
        from inventory.upgrade import upgrade

        return await upgrade(inv, limit, progress, purge)
    if name == "keys":
        from inventory.keys import keys_command

        return await keys_command(
            args.op, inv, limit, progress, getattr(args, "key", None), parallel=forks
        )
    raise ConfigError("command", f"unknown inventory command {name!r}")


def prompt_secrets(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(SSH password, become password) from ``--ask-pass``/``--ask-become-pass``, asked once."""
    password = getpass.getpass("SSH password: ") if getattr(args, "ask_pass", False) else None
    become = None
    if getattr(args, "ask_become_pass", False):
        hint = "[defaults to SSH password]" if password is not None else ""
        become = getpass.getpass(f"BECOME password{hint}: ")
        if not become and password is not None:
            become = password  # Ansible's rule: an empty answer reuses the SSH password
    return password, become


def with_credentials(inv: Inventory, password: str | None, become: str | None) -> Inventory:
    """``inv`` with the prompted passwords given to hosts that set none of their own."""
    if password is None and become is None:
        return inv
    hosts = {}
    for name, host in inv.hosts.items():
        if password is not None and host.password is None:
            host = dataclasses.replace(host, password=password)
        if become is not None and host.become is not None and host.become.password is None:
            host = dataclasses.replace(host, become=dataclasses.replace(host.become, password=become))
        hosts[name] = host
    return dataclasses.replace(inv, hosts=hosts)


def become_defaults(args: argparse.Namespace) -> dict[str, object]:
    """``-b``, ``--become-method``, ``--become-user`` as variables an inventory may override."""
    found: dict[str, object] = {}
    if getattr(args, "become", False):
        found["ansible_become"] = True
    if getattr(args, "become_method", None):
        found["ansible_become_method"] = args.become_method
    if getattr(args, "become_user", None):
        found["ansible_become_user"] = args.become_user
    return found
