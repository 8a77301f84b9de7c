"""The ``ssh`` options an inventory may pass in ``ansible_ssh_common_args``/``_extra_args``.

Ansible appends these words to its ``ssh`` command line; meshtui talks SSH
through asyncssh instead, so it reads them and maps what it understands onto
asyncssh's connection options:

==========================  =============================================
``-o ProxyJump=J`` / ``-J J``  jump hosts ``[user@]host[:port][,...]`` or ``none``
``-o Port=N`` / ``-p N``       SSH port (``ansible_port`` wins when set)
``-o User=U`` / ``-l U``       login user (``ansible_user`` wins when set)
``-o IdentityFile=F`` / ``-i F``  another client key (repeatable)
``-o StrictHostKeyChecking=``  ``yes``/``no`` (``off``, ``false`` mean no) or
                               ``accept-new`` (an unknown host's key is trusted and
                               added to known_hosts; a changed key is refused);
                               ``ansible_host_key_checking: false`` wins
``-o UserKnownHostsFile=F``    known_hosts file(s) instead of ``~/.ssh/known_hosts``
``-o ConnectTimeout=S``        seconds to establish the connection
==========================  =============================================

``-o`` takes ``Key=Value``, ``Key Value`` (one quoted word) and the joined
``-oKey=Value`` forms; keys are case-insensitive as in ``ssh_config``.
Anything else -- another ``-o`` key, another flag, a bare word -- is refused
with ``SshArgsError`` naming it, rather than silently ignored: an option that
changes how a host is reached must not be dropped without a word.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SUPPORTED = ("ProxyJump", "Port", "User", "IdentityFile", "StrictHostKeyChecking",
             "UserKnownHostsFile", "ConnectTimeout")
"""The ``-o`` keys meshtui honours, in their ``ssh_config`` spelling."""

_CANONICAL = {key.lower(): key for key in SUPPORTED}
_SHORT = {"-J": "ProxyJump", "-p": "Port", "-l": "User", "-i": "IdentityFile"}
_STRICT = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


class SshArgsError(ValueError):
    """An ssh argument meshtui cannot honour; ``str()`` is one line naming it."""


@dataclass(frozen=True, slots=True)
class SshOptions:
    """What the ssh arguments asked for; ``None`` = not given (defaults/ssh config apply)."""

    proxy_jump: str | None = None
    """``[user@]host[:port][,...]`` or ``"none"`` (no jump, even if ssh config has one)."""
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    strict_host_key_checking: bool | None = None
    accept_new: bool = False
    """``StrictHostKeyChecking=accept-new``: learn unknown hosts' keys, refuse changed ones."""
    known_hosts_files: tuple[str, ...] = ()
    connect_timeout: float | None = None


def _value(key: str, value: str, found: dict[str, object]) -> None:
    """Check one option's value and record it (ssh keeps the first value of each key)."""
    if key == "IdentityFile":
        found.setdefault(key, [])
        ids = found[key]
        assert isinstance(ids, list)
        ids.append(value)
        return
    if key in found:
        return
    if key == "Port":
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise SshArgsError(f"ssh option Port={value!r}: expected a port number 1-65535")
        found[key] = int(value)
    elif key == "ConnectTimeout":
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if seconds <= 0:
            raise SshArgsError(f"ssh option ConnectTimeout={value!r}: expected a positive number of seconds")
        found[key] = seconds
    elif key == "StrictHostKeyChecking":
        if value.lower() == "accept-new":
            found[key] = "accept-new"
            return
        if value.lower() not in _STRICT:
            raise SshArgsError(
                f"ssh option StrictHostKeyChecking={value!r} is not supported (use yes, no or accept-new)"
            )
        found[key] = _STRICT[value.lower()]
    elif key == "ProxyJump":
        _check_jump(value)
        found[key] = value
    elif key == "UserKnownHostsFile":
        found[key] = tuple(shlex.split(value))
    else:
        found[key] = value


def _check_jump(value: str) -> None:
    if value.lower() == "none":
        return
    for hop in value.split(","):
        host = hop.rsplit("@", 1)[-1]
        if host.startswith("ssh://"):
            raise SshArgsError(f"ssh option ProxyJump={value!r}: use [user@]host[:port], not ssh:// URLs")
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        if not name or any(c.isspace() for c in hop) or (port and not port.isdigit()):
            raise SshArgsError(f"ssh option ProxyJump={value!r}: expected [user@]host[:port][,...]")


def _split_option(text: str) -> tuple[str, str]:
    """``Key=Value`` or ``Key Value`` → (canonical key, value); unknown keys are refused."""
    key, sep, value = text.partition("=")
    if not sep:
        key, _, value = text.strip().partition(" ")
    key, value = key.strip(), value.strip()
    canonical = _CANONICAL.get(key.lower())
    if canonical is None:
        raise SshArgsError(
            f"unsupported ssh option -o {key or text!r}; meshtui honours only "
            + ", ".join(SUPPORTED)
        )
    if not value:
        raise SshArgsError(f"ssh option -o {canonical} has no value")
    return canonical, value


def parse_ssh_args(*texts: str) -> SshOptions:
    """Parse ``ansible_ssh_common_args`` then ``ansible_ssh_extra_args`` (first value wins)."""
    found: dict[str, object] = {}
    for text in texts:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise SshArgsError(f"cannot split ssh arguments {text!r}: {exc}") from None
        i = 0
        while i < len(words):
            word = words[i]
            if word == "-o" or word in _SHORT:
                if i + 1 >= len(words):
                    raise SshArgsError(f"ssh argument {word} needs a value")
                option = words[i + 1]
                i += 2
                if word == "-o":
                    _value(*_split_option(option), found)
                else:
                    _value(_SHORT[word], option, found)
            elif word.startswith("-o") and len(word) > 2:
                _value(*_split_option(word[2:]), found)
                i += 1
            elif word[:2] in _SHORT and len(word) > 2:
                _value(_SHORT[word[:2]], word[2:], found)
                i += 1
            else:
                raise SshArgsError(
                    f"unsupported ssh argument {word!r}; meshtui honours -o KEY=VALUE "
                    "(" + ", ".join(SUPPORTED) + "), -J, -p, -l and -i"
                )
    ids = found.get("IdentityFile", [])
    assert isinstance(ids, list)
    port, timeout = found.get("Port"), found.get("ConnectTimeout")
    strict, known = found.get("StrictHostKeyChecking"), found.get("UserKnownHostsFile", ())
    return SshOptions(
        proxy_jump=str(found["ProxyJump"]) if "ProxyJump" in found else None,
        port=port if isinstance(port, int) else None,
        user=str(found["User"]) if "User" in found else None,
        identity_files=tuple(str(i) for i in ids),
        strict_host_key_checking=strict if isinstance(strict, bool) else None,
        accept_new=strict == "accept-new",
        known_hosts_files=known if isinstance(known, tuple) else (),
        connect_timeout=timeout if isinstance(timeout, float) else None,
    )


def jump_hops(spec: str) -> list[tuple[str | None, str, int | None]]:
    """``a@b:2222,c`` → ``[("a", "b", 2222), (None, "c", None)]``; ``none`` → ``[]``."""
    if spec.lower() == "none":
        return []
    hops: list[tuple[str | None, str, int | None]] = []
    for hop in spec.split(","):
        user, _, rest = hop.rpartition("@")
        host, port = rest, None
        if rest.startswith("[") and "]" in rest:  # [v6addr]:port
            host, _, tail = rest[1:].partition("]")
            port = int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else None
        elif rest.count(":") == 1:
            host, _, text = rest.partition(":")
            port = int(text)
        hops.append((user or None, host, port))
    return hops
