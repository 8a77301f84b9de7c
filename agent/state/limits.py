"""Bounds of the replicated commands: every size, count and range a command must
keep to, in one place (``commands.py`` checks them; ``submit_rules.py`` holds
``task.submit``'s).  Re-exported by ``commands.py``, where callers import them."""

from __future__ import annotations

MAX_COMMAND_BYTES = 4 * 1024 * 1024
"""Largest encoded command accepted."""
MAX_RID_LEN = 128
MAX_NAME_LEN = 256
"""Node ids and names, namespaces, capability tags, task ids, reasons."""
MAX_KEY_LEN = 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_TITLE_LEN = 200
MAX_BODY_BYTES = 64 * 1024
MAX_ARGV = 1024
MAX_ARG_LEN = 128 * 1024
MAX_ENV = 512
MAX_CAPS = 64
MAX_TARGETS = 100_000
MAX_BATCH = 1024
"""Commands one ``batch`` entry may carry."""
MAX_PLACEMENTS = 4096
"""Placements one ``task.place`` entry may carry (a scheduling round proposes at
most ``MAX_DECISIONS_PER_ROUND``, 1024, of them)."""
MAX_PRIORITY = 1000
MAX_RETRIES = 100
MAX_TIMEOUT = 30 * 24 * 3600.0
MAX_REPLICAS = 16
MAX_ARTIFACTS = 32
"""Artifact paths one task may name."""
MIN_TASK_MEM = 1 << 20
"""Smallest memory limit a task may ask for (bytes): below it nothing starts."""
MAX_TASK_MEM = 1 << 60
"""Largest memory limit (bytes); cgroup files take up to 2**63 - 1."""
MAX_TASK_PIDS = 4 * 1024 * 1024
"""Largest pids limit (the kernel's PID_MAX_LIMIT)."""
MAX_TTL_MS = 365 * 24 * 3600 * 1000
"""Longest KV TTL (milliseconds): a year; longer lived keys need no TTL."""
MAX_EXPIRE_KEYS = 1000
"""Keys one ``kv.expire`` entry may remove (the leader batches what is due)."""
STRATEGIES = ("auction", "capability", "hash")
PROPOSAL_KINDS = ("text", "config")


def name_ok(value: str) -> bool:
    """A node id or name, namespace, capability tag, task id or reason: 1 to
    ``MAX_NAME_LEN`` characters."""
    return 0 < len(value) <= MAX_NAME_LEN
