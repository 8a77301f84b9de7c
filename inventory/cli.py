"""Glue between ``meshtui deploy|undeploy|upgrade|keys -i FILE`` and this package.

``run_inventory_command(name, args)`` loads the inventory, runs the action
with a ``PlainProgress`` (one line per host event on stdout), prints one line
per failed host and a summary, and returns the exit code: 0 when every host
succeeded, 1 when any failed, 2 for a bad inventory, pattern or local setup
(the error is one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from agent.errors import ConfigError, MeshError
from inventory.errors import InventoryError
from inventory.loader import Inventory, load_inventory
from inventory.progress import DeployReport, PlainProgress, QuietProgress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def run_inventory_command(name: str, args: argparse.Namespace) -> int:
    try:
        inv = load_inventory(args.inventory)
        limit = getattr(args, "limit", None)
        hosts = [h.name for h in inv.select(limit)]
    except InventoryError as exc:
        sys.stderr.write(f"meshtui: {exc}\n")
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
    if name == "deploy":
        from inventory.deploy import deploy

        return await deploy(inv, limit, progress, purge)
    if name == "undeploy":
        from inventory.deploy import undeploy

        return await undeploy(inv, limit, progress, purge)
    if name == "upgrade":
        from inventory.upgrade import upgrade

        return await upgrade(inv, limit, progress, purge)
    if name == "keys":
        from inventory.keys import keys_command

        return await keys_command(args.op, inv, limit, progress, getattr(args, "key", None))
    raise ConfigError("command", f"unknown inventory command {name!r}")
