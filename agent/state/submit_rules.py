"""``task.submit``'s rules: the bounds every node checks on every submit, and the
fast paths for the usual submit (the common case, checked in one pass and decoded
without a converter call per field) beside the rule walk that names a refusal.

Every node checks and decodes every submit (the leader at encode, every node at
decode), so these run once per task per node; each fast path answers exactly what
the slow path would (``tests/unit/test_submit_check_fast.py``,
``test_task_submit_direct.py``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from typing import Any, Final

from agent.output_store import artifact_refusal
from agent.state.limits import (
    MAX_ARG_LEN,
    MAX_ARGV,
    MAX_ARTIFACTS,
    MAX_CAPS,
    MAX_ENV,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TASK_MEM,
    MAX_TASK_PIDS,
    MAX_TIMEOUT,
    MIN_TASK_MEM,
    STRATEGIES,
    name_ok,
)
from agent.state.ops import TaskSubmit

SUBMIT_RULES: Final[tuple[tuple[Callable[[TaskSubmit], bool], str], ...]] = (
    # (is broken, why), checked in order: the first broken rule is the reason.
    (lambda s: (s.argv is None) == (s.shell is None),
     "exactly one of argv and shell must be given"),
    (lambda s: s.argv is not None and not 0 < len(s.argv) <= MAX_ARGV,
     f"argv must have 1-{MAX_ARGV} items"),
    (lambda s: s.argv is not None and any(len(a) > MAX_ARG_LEN for a in s.argv),
     f"an argument exceeds {MAX_ARG_LEN} characters"),
    (lambda s: s.shell is not None and not 0 < len(s.shell) <= MAX_ARG_LEN,
     f"shell command must be 1-{MAX_ARG_LEN} characters"),
    (lambda s: len(s.env) > MAX_ENV or any(not k or "=" in k or "\0" in k for k in s.env),
     "env names must be non-empty without '=' or NUL, at most 512 of them"),
    (lambda s: len(s.caps) > MAX_CAPS or not all(name_ok(c) for c in s.caps),
     f"at most {MAX_CAPS} capabilities, each 1-{MAX_NAME_LEN} characters"),
    (lambda s: s.key is not None and not 0 < len(s.key) <= MAX_KEY_LEN,
     f"key must be 1-{MAX_KEY_LEN} characters"),
    (lambda s: s.strategy not in STRATEGIES,
     f"strategy must be one of {', '.join(STRATEGIES)}"),
    (lambda s: not -MAX_PRIORITY <= s.priority <= MAX_PRIORITY,
     f"priority must be in [-{MAX_PRIORITY}, {MAX_PRIORITY}]"),
    (lambda s: not 0 <= s.retries <= MAX_RETRIES,
     f"retries must be in [0, {MAX_RETRIES}]"),
    (lambda s: s.timeout is not None and not 0.0 < s.timeout <= MAX_TIMEOUT,
     "timeout must be positive and at most 30 days"),
    (lambda s: len(s.submitter) > MAX_NAME_LEN or (s.cwd is not None and len(s.cwd) > 4096),
     "submitter or cwd too long"),
    (lambda s: s.mem != 0 and not MIN_TASK_MEM <= s.mem <= MAX_TASK_MEM,
     f"mem must be 0 (no limit) or {MIN_TASK_MEM} to {MAX_TASK_MEM} bytes"),
    (lambda s: not 0 <= s.pids <= MAX_TASK_PIDS,
     f"pids must be 0 (no limit) to {MAX_TASK_PIDS}"),
    (lambda s: len(s.artifacts) > MAX_ARTIFACTS,
     f"at most {MAX_ARTIFACTS} artifacts"),
)  # fmt: skip


def submit_ok(s: TaskSubmit) -> bool:
    """No rule of ``SUBMIT_RULES`` broken and no artifact to check: the usual submit,
    in one pass (every node checks every submit; the rules' loop costs a call per
    rule).  False says nothing: the rules decide, and name the reason."""
    argv, shell = s.argv, s.shell
    if argv is not None:
        if shell is not None or not 0 < len(argv) <= MAX_ARGV or max(map(len, argv)) > MAX_ARG_LEN:
            return False
    elif shell is None or not 0 < len(shell) <= MAX_ARG_LEN:
        return False
    return _submit_texts_ok(s) and _submit_numbers_ok(s)


def _submit_texts_ok(s: TaskSubmit) -> bool:
    env, caps, key, cwd = s.env, s.caps, s.key, s.cwd
    return (
        (not env or (len(env) <= MAX_ENV and all(k and "=" not in k and "\0" not in k for k in env)))
        and (not caps or (len(caps) <= MAX_CAPS and all(0 < len(c) <= MAX_NAME_LEN for c in caps)))
        and (key is None or 0 < len(key) <= MAX_KEY_LEN)
        and s.strategy in STRATEGIES
        and len(s.submitter) <= MAX_NAME_LEN
        and (cwd is None or len(cwd) <= 4096)
        and not s.artifacts
    )


def _submit_numbers_ok(s: TaskSubmit) -> bool:
    timeout, mem = s.timeout, s.mem
    return (
        -MAX_PRIORITY <= s.priority <= MAX_PRIORITY
        and 0 <= s.retries <= MAX_RETRIES
        and (timeout is None or 0.0 < timeout <= MAX_TIMEOUT)
        and (mem == 0 or MIN_TASK_MEM <= mem <= MAX_TASK_MEM)
        and 0 <= s.pids <= MAX_TASK_PIDS
    )


def check_submit(s: TaskSubmit) -> str | None:
    return None if submit_ok(s) else rules_refusal(s)


def rules_refusal(s: TaskSubmit) -> str | None:
    """The first of ``SUBMIT_RULES`` (then the artifact names) ``s`` breaks: the rule
    walk that names the reason, which ``submit_ok`` skips for a usual submit."""
    for broken, reason in SUBMIT_RULES:
        if broken(s):
            return reason
    for name in s.artifacts:
        refusal = artifact_refusal(name)
        if refusal is not None:
            return refusal
    return None


def _strs(items: Any) -> bool:
    return type(items) is tuple and all(type(item) is str for item in items)


def _str_or_none(value: Any) -> bool:
    return value is None or type(value) is str


def submit_decodes_to_itself(s: TaskSubmit) -> bool:
    """Is ``s`` exactly what ``decode_command`` rebuilds from its bytes: every field
    of its declared type exactly (a tuple of str, a dict of str to str, a float
    timeout, a bool, ints), so the leader that encoded it may apply ``s`` itself
    instead of decoding its entry, and its state (and snapshots) stay byte for byte
    the followers'.  ``==`` cannot decide this: ``1 == 1.0 == True``, and a str
    subclass equals its str.  Valid only for a body ``encode_command`` accepted."""
    return (
        (s.argv is None or _strs(s.argv))
        and _str_or_none(s.shell)
        and type(s.env) is dict
        and all(type(k) is str and type(v) is str for k, v in s.env.items())
        and _str_or_none(s.cwd)
        and _strs(s.caps)
        and _str_or_none(s.key)
        and type(s.strategy) is str
        and type(s.priority) is int
        and type(s.retries) is int
        and (s.timeout is None or type(s.timeout) is float)
        and type(s.restartable) is bool
        and type(s.submitter) is str
        and type(s.mem) is int
        and type(s.pids) is int
        and _strs(s.artifacts)
    )


SUBMIT_FIELDS: Final = (
    "argv", "shell", "env", "cwd", "caps", "key", "strategy", "priority", "retries",
    "timeout", "restartable", "submitter", "mem", "pids", "artifacts",
)  # fmt: skip
"""The fields ``submit_decodes_to_itself`` checks (a new field must be added there)."""
if tuple(f.name for f in dataclasses.fields(TaskSubmit)) != SUBMIT_FIELDS:
    raise RuntimeError("TaskSubmit's fields changed: update submit_decodes_to_itself")

_submit_values: Final = operator.itemgetter(*SUBMIT_FIELDS)


def _wire_strs(
    argv: Any, shell: Any, cwd: Any, key: Any, strategy: Any, submitter: Any,
    env: Any, caps: Any, artifacts: Any,
) -> bool:
    """``usual_submit``'s texts: each of its usual wire type."""
    return (
        (argv is None or (type(argv) is list and all(type(a) is str for a in argv)))
        and (shell is None or type(shell) is str)
        and (cwd is None or type(cwd) is str)
        and (key is None or type(key) is str)
        and type(strategy) is str
        and type(submitter) is str
        and type(env) is dict
        and all(type(k) is str and type(v) is str for k, v in env.items())
        and _str_list(caps)
        and _str_list(artifacts)
    )


def _str_list(items: Any) -> bool:
    return type(items) is list and all(type(item) is str for item in items)


def usual_submit(m: dict[Any, Any]) -> TaskSubmit | None:
    """The ``TaskSubmit`` a decoded map of its fields stands for when every value has
    its usual wire type (str or None, lists of str, a map of str to str, ints, a
    bool, a finite float or None): what the ``TaskSubmit`` converter's ``build`` makes of it, without
    a converter call per field (every node decodes every submit).  None: the
    converters decide, and name what is wrong."""
    if len(m) != len(SUBMIT_FIELDS):
        return None
    try:
        (argv, shell, env, cwd, caps, key, strategy, priority, retries, timeout,
         restartable, submitter, mem, pids, artifacts) = _submit_values(m)  # fmt: skip
    except KeyError:
        return None
    if not (
        _wire_strs(argv, shell, cwd, key, strategy, submitter, env, caps, artifacts)
        and type(priority) is int
        and type(retries) is int
        and (timeout is None or (type(timeout) is float and math.isfinite(timeout)))
        and type(restartable) is bool
        and type(mem) is int
        and type(pids) is int
    ):
        return None
    return TaskSubmit(
        None if argv is None else tuple(argv), shell, env, cwd, tuple(caps), key, strategy,
        priority, retries, timeout, restartable, submitter, mem, pids, tuple(artifacts),
    )
