"""A run's first process started by the C library's ``posix_spawn``.

``subprocess.Popen`` costs the agent about 0.14-0.17 ms of CPU per spawn on
the box this was measured on, most of it Python around the vfork; glibc's
``posix_spawn`` (a vfork and exec in C, called through ctypes) about
0.09-0.10 ms for the same child.  ``os.posix_spawn`` cannot be used: it has no
working-directory action and does not close inherited descriptors.

The child gets exactly what the executor's ``Popen`` gave it: stdin from
``/dev/null``, stdout and stderr on the given pipe ends, every other
descriptor closed (``close_fds``), the working directory, a new session
(``start_new_session``), SIGPIPE and SIGXFSZ back to their default action
(Popen's ``restore_signals``; Python ignores them), glibc's own signals 32 and
33 at their default too (its posix_spawn would leave them ignored, and so
across the exec), the environment given and the agent thread's signal mask.
An exec that fails is this call's OSError, as with Popen (glibc reaps the
child it made).

Needs glibc 2.34 or later (``posix_spawn_file_actions_addclosefrom_np`` and
``..._addchdir_np``); ``AVAILABLE`` is False elsewhere and the executor uses
``Popen``.  Arguments and environment must hold no NUL byte (``usable``): C
strings would cut them short where Popen refuses them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_SETSIGDEF = 0x04
_SETSID = 0x80
"""glibc's POSIX_SPAWN_SETSIGDEF and POSIX_SPAWN_SETSID flag values (spawn.h)."""
_OPAQUE = 1024
"""Bytes given to each opaque glibc structure (file actions 76, attributes 336 on x86_64)."""
_DEVNULL = b"/dev/null"
_INTERNAL = (32, 33)
"""glibc's SIGCANCEL and SIGSETXID (below SIGRTMIN, which it moves to 34)."""
_NEEDED = (
    "posix_spawn", "posix_spawn_file_actions_init", "posix_spawn_file_actions_destroy",
    "posix_spawn_file_actions_addopen", "posix_spawn_file_actions_adddup2",
    "posix_spawn_file_actions_addchdir_np", "posix_spawn_file_actions_addclosefrom_np",
    "posix_spawnattr_init", "posix_spawnattr_destroy", "posix_spawnattr_setflags",
    "posix_spawnattr_setsigdefault", "sigemptyset", "sigaddset", "gnu_get_libc_version",
)


def _load() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in _NEEDED):
        return None
    libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
    return libc


_LIBC = _load()
AVAILABLE = _LIBC is not None
"""This C library has every call ``spawn`` makes."""


def _add_internal(sigset: ctypes.Array[ctypes.c_char]) -> int:
    """Put glibc's own signals 32 and 33 in ``sigset`` (its ``sigaddset`` refuses them):
    its posix_spawn leaves them ignored in the child otherwise, and an ignored signal
    stays ignored across exec, where Popen's child has them at their default."""
    words = (ctypes.c_ulong * (_OPAQUE // ctypes.sizeof(ctypes.c_ulong))).from_buffer(sigset)
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    for sig in _INTERNAL:
        words[(sig - 1) // bits] |= 1 << ((sig - 1) % bits)
    return 0


def usable(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bool:
    """Can ``spawn`` pass these as C strings unchanged?"""
    if not AVAILABLE or "\0" in "".join((cwd, *argv, *env, *env.values())):
        return False
    return all(key and "=" not in key for key in env)


_ATTRS: ctypes.Array[ctypes.c_char] | None = None
"""The spawn attributes every run gets (flags, default signals): built at the first
spawn and kept (``posix_spawn`` only reads them)."""
_FS = sys.getfilesystemencoding()


def _attributes() -> ctypes.Array[ctypes.c_char]:
    global _ATTRS
    if _ATTRS is None:
        libc = _LIBC
        attrs = ctypes.create_string_buffer(_OPAQUE)
        sigdef = ctypes.create_string_buffer(_OPAQUE)
        libc.posix_spawnattr_init(attrs)
        for failed in (
            libc.sigemptyset(sigdef),
            libc.sigaddset(sigdef, signal.SIGPIPE),
            libc.sigaddset(sigdef, signal.SIGXFSZ),
            _add_internal(sigdef),
            libc.posix_spawnattr_setsigdefault(attrs, sigdef),
            libc.posix_spawnattr_setflags(attrs, _SETSIGDEF | _SETSID),
        ):
            if failed:  # the sigset calls return -1 and set errno, the attribute calls an errno
                libc.posix_spawnattr_destroy(attrs)
                code = failed if failed > 0 else ctypes.get_errno()
                raise OSError(code, f"posix_spawn setup: {os.strerror(code)}")
        _ATTRS = attrs
    return _ATTRS


def spawn(path: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
          stdout: int, stderr: int) -> int:
    """Start ``path`` (no PATH search: the caller found it) and return its pid."""
    libc = _LIBC
    attrs = _attributes()
    actions = ctypes.create_string_buffer(_OPAQUE)
    libc.posix_spawn_file_actions_init(actions)
    try:
        for failed in (
            libc.posix_spawn_file_actions_addopen(actions, 0, _DEVNULL, os.O_RDONLY, 0),
            libc.posix_spawn_file_actions_adddup2(actions, stdout, 1),
            libc.posix_spawn_file_actions_adddup2(actions, stderr, 2),
            libc.posix_spawn_file_actions_addchdir_np(actions, cwd.encode(_FS, "surrogateescape")),
            libc.posix_spawn_file_actions_addclosefrom_np(actions, 3),
        ):
            if failed:  # the file actions return an errno
                raise OSError(failed, f"posix_spawn setup: {os.strerror(failed)}")
        args = (ctypes.c_char_p * (len(argv) + 1))(
            *[arg.encode(_FS, "surrogateescape") for arg in argv], None)
        envp = (ctypes.c_char_p * (len(env) + 1))(
            *[f"{key}={value}".encode(_FS, "surrogateescape") for key, value in env.items()],
            None)
        pid = ctypes.c_int()
        error = libc.posix_spawn(ctypes.byref(pid), path.encode(_FS, "surrogateescape"),
                                 actions, attrs, args, envp)
        if error:
            raise OSError(error, os.strerror(error), path)
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
