"""Ansible-format inventories (YAML and INI) and SSH deployments of mesh-agent.

``load_inventory(path)`` parses a file into resolved ``Host`` records;
``Inventory.select(pattern)`` applies an Ansible ``--limit`` pattern.  Every
malformed input raises ``InventoryError`` whose ``str()`` is one line naming
the file, the line and the reason.  Deployment entry points live in
``inventory.deploy``, ``inventory.upgrade`` and ``inventory.keys`` (they import
asyncssh only when called).
"""

from inventory.errors import InventoryError
from inventory.hostvars import Host
from inventory.loader import Inventory, load_inventory

__all__ = ["Host", "Inventory", "InventoryError", "load_inventory"]
