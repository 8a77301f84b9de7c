"""Unit tests: ssh ``-o`` option parsing, become command construction, credentials, check-mode diffs.

No SSH here: the namespace test (test_inventory_become_netns.py) runs all of
this against real sshd, sudo and su.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest

from inventory import InventoryError, load_inventory
from inventory.become import Become, looks_like_prompt, split_su_output, wrap
from inventory.checkmode import file_diff
from inventory.cli import EXIT_USAGE, run_inventory_command, with_credentials
from inventory.hostvars import Host
from inventory.remote import client_options
from inventory.sshargs import SshArgsError, SshOptions, jump_hops, parse_ssh_args


def test_every_supported_option_in_every_spelling() -> None:
    opts = parse_ssh_args(
        "-o ProxyJump=ops@bastion:2222 -o 'Port 2200' -oUser=alice -o IdentityFile=~/.ssh/a",
        "-i /k/b -o stricthostkeychecking=no -o UserKnownHostsFile='/k/known /k/more' "
        "-o ConnectTimeout=7.5",
    )
    assert opts == SshOptions(
        proxy_jump="ops@bastion:2222",
        port=2200,
        user="alice",
        identity_files=("~/.ssh/a", "/k/b"),
        strict_host_key_checking=False,
        known_hosts_files=("/k/known", "/k/more"),
        connect_timeout=7.5,
    )


def test_short_flags_and_first_value_wins() -> None:
    opts = parse_ssh_args("-J a@j1,j2:2022 -p 2201 -l bob", "-o ProxyJump=other -o Port=1 -o User=x")
    assert (opts.proxy_jump, opts.port, opts.user) == ("a@j1,j2:2022", 2201, "bob")
    assert parse_ssh_args("-oStrictHostKeyChecking=yes").strict_host_key_checking is True
    learn = parse_ssh_args("-o StrictHostKeyChecking=accept-new")
    assert learn.accept_new and learn.strict_host_key_checking is None
    assert parse_ssh_args("").proxy_jump is None
    assert parse_ssh_args("-o ProxyJump=none").proxy_jump == "none"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ("-o ControlMaster=auto", "-o 'ControlMaster'"),
        ("-o ControlPersist=60s -o Port=22", "-o 'ControlPersist'"),
        ("-oForwardAgent=yes", "-o 'ForwardAgent'"),
        ("-v", "'-v'"),
        ("-A -o Port=22", "'-A'"),
        ("bastion", "'bastion'"),
        ("-o Port=99999", "Port='99999'"),
        ("-o ConnectTimeout=soon", "ConnectTimeout='soon'"),
        ("-o StrictHostKeyChecking=ask", "StrictHostKeyChecking='ask'"),
        ("-o ProxyJump=ssh://b", "ProxyJump='ssh://b'"),
        ("-o", "-o needs a value"),
        ("-o User=", "-o User has no value"),
    ],
)
def test_anything_else_is_refused_with_one_line_naming_it(args: str, named: str) -> None:
    with pytest.raises(SshArgsError) as caught:
        parse_ssh_args(args)
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


def test_jump_hops() -> None:
    assert jump_hops("a@b:2222,c") == [("a", "b", 2222), (None, "c", None)]
    assert jump_hops("[fd00::1]:22") == [(None, "fd00::1", 22)]
    assert jump_hops("none") == []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return path


def test_inventory_connection_variables_merge_with_ssh_args(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, """\
all:
  vars:
    ansible_ssh_common_args: -o ProxyJump=jump -o Port=2200 -o User=ops -o StrictHostKeyChecking=no
    ansible_become: yes
    ansible_become_password: bec0me
  hosts:
    a: {ansible_port: 22, ansible_user: root, ansible_password: l0gin}
    b: {ansible_become_method: su, ansible_become_user: mesh}
    c: {ansible_become: false, ansible_ssh_extra_args: -o ConnectTimeout=3}
"""))
    a, b, c = inv.host("a"), inv.host("b"), inv.host("c")
    assert (a.ssh_port, a.user) == (22, "root")  # ansible_port/_user win over -o
    assert (b.ssh_port, b.user) == (2200, "ops")
    assert not a.host_key_checking
    assert a.ssh.proxy_jump == "jump"
    assert a.password == "l0gin" and b.password is None
    assert a.become == Become("sudo", "root", "bec0me")
    assert b.become == Become("su", "mesh", "bec0me")
    assert c.become is None and c.ssh.connect_timeout == 3.0
    for host in (a, b, c):  # secrets stay out of vars and of any repr
        assert "ansible_password" not in host.vars
        assert "ansible_become_password" not in host.vars
        assert "l0gin" not in repr(host) and "bec0me" not in repr(host)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ansible_become_method: runas", "ansible_become_method must be one of sudo, su, got 'runas'"),
        ("ansible_ssh_common_args: -o ServerAliveInterval=5", "-o 'ServerAliveInterval'"),
        ("ansible_ssh_extra_args: -X", "unsupported ssh argument '-X'"),
    ],
)
def test_bad_become_or_ssh_args_point_at_their_line(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, f"all:\n  hosts:\n    a:\n      ansible_become: true\n      {line}\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}:5: host 'a': ")
    assert reason in str(caught.value)


def test_client_options(tmp_path: Path) -> None:
    inv_host = host_from(
        tmp_path / "one.yml",
        "a: {ansible_host: 10.0.0.1, ansible_ssh_private_key_file: /k/main, ansible_password: pw,"
        " ansible_ssh_common_args: '-i /k/more -o UserKnownHostsFile=/k/kh -o ConnectTimeout=4'}"
    )
    options = client_options(inv_host)
    assert options == {
        "port": 22,
        "connect_timeout": 4.0,
        "client_keys": ["/k/main", "/k/more"],
        "known_hosts": ([], [], []),  # /k/kh does not exist: no host listed
        "password": "pw",
    }
    off = client_options(host_from(tmp_path / "two.yml", "a: {ansible_host_key_checking: false}"))
    assert off["known_hosts"] is None and "password" not in off and "client_keys" not in off


def host_from(path: Path, host_line: str) -> Host:
    path.write_text("all:\n  hosts:\n    " + host_line + "\n")
    return load_inventory(path).host("a")


def test_sudo_wrapping_keeps_the_password_out_of_the_command() -> None:
    with_pw = wrap(Become("sudo", "mesh", "hunter2-secret"), "cat > /x", token="t0k")
    assert "hunter2-secret" not in with_pw.command
    assert with_pw.command.startswith("sudo -H -S -p '[meshtui-sudo-t0k] password: ' -u mesh -- sh -c ")
    assert not with_pw.pty and with_pw.ok == "MESHTUI-BECOME-OK-t0k"
    no_pw = wrap(Become("sudo", "root", None), "true", token="t0k")
    assert no_pw.command.startswith("sudo -H -n -u root -- sh -c ")  # fails fast, never waits


def test_su_wrapping_reads_base64_input_in_a_raw_pty() -> None:
    w = wrap(Become("su", "mesh", "pw"), "cat > /x", input_size=10, token="t")
    assert w.pty and w.input_size == 16 == len(base64.b64encode(b"0123456789"))
    assert w.command.startswith("su mesh -c ")
    assert "head -c 16 | base64 -d" in w.command and "pw" not in w.command.replace("printf", "")
    bare = wrap(Become("su", "root"), "true", token="t")
    assert "< /dev/null" in bare.command and "head -c" not in bare.command


def test_su_stream_split_and_prompt_detection() -> None:
    out, err = split_su_output(b"line1\nline2\nMESHTUI-BECOME-END-t\noops\n", "MESHTUI-BECOME-END-t")
    assert (out, err) == (b"line1\nline2", b"oops\n")
    assert looks_like_prompt("Password: ")
    assert looks_like_prompt("Passwort:")
    assert looks_like_prompt("\r\nMot de passe : ")
    assert not looks_like_prompt("")
    assert not looks_like_prompt("Password: \r\nsu: Authentication failure\r\n")


def test_prompted_passwords_go_only_where_none_is_set(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, """\
all:
  hosts:
    a: {ansible_become: true}
    b: {ansible_become: true, ansible_become_password: own, ansible_password: mine}
    c: {}
"""))
    done = with_credentials(inv, "typed", "typed-become")
    assert done.host("a").password == "typed"
    assert done.host("a").become == Become("sudo", "root", "typed-become")
    assert done.host("b").password == "mine"
    assert done.host("b").become == Become("sudo", "root", "own")
    assert done.host("c").become is None
    assert with_credentials(inv, None, None) is inv


def test_diff_needs_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "inv.ini"
    path.write_text("[web]\nw1\n")
    ns = argparse.Namespace(inventory=str(path), limit=None, diff=True, check=False)
    assert run_inventory_command("deploy", ns) == EXIT_USAGE
    assert capsys.readouterr().err == "meshtui deploy: --diff is only supported with --check\n"


def test_file_diff_shows_changes_and_hides_secrets() -> None:
    text = file_diff("h1", "/etc/a.toml", b"slots = 2\nname = 1\n", b"slots = 3\nname = 1\n", 0o644)
    assert text.splitlines() == [
        "--- h1:/etc/a.toml", "+++ h1:/etc/a.toml", "@@ -1,2 +1,2 @@",
        "-slots = 2", "+slots = 3", " name = 1",
    ]
    new = file_diff("h1", "/etc/a.toml", None, b"x\n", 0o644)
    assert new.startswith("--- /dev/null\n+++ h1:/etc/a.toml\n")
    secret = file_diff("h1", "/etc/cluster.key", b"old\n", b"new-key\n", 0o600)
    assert "new-key" not in secret and "old" not in secret and "secret" in secret


async def test_an_unreachable_jump_host_is_one_connect_line(tmp_path: Path) -> None:
    from support.ports import free_port

    from inventory.remote import StepError, connect

    closed = free_port()  # nothing listens there
    h = host_from(tmp_path / "j.yml", f"a: {{ansible_host: 10.255.255.1, ansible_ssh_common_args:"
                  f" '-J nobody@127.0.0.1:{closed} -o ConnectTimeout=5'}}")
    with pytest.raises(StepError) as caught:
        async with connect(h):
            pass
    text = str(caught.value)
    assert text.startswith(f"connect: jump host 127.0.0.1:{closed}: "), text
    assert "\n" not in text


@pytest.mark.root(tools=("sshd", "ssh-keygen"))
async def test_accept_new_learns_an_unknown_host_and_refuses_a_changed_key(tmp_path: Path) -> None:
    from support.sshd import loopback_sshd

    from inventory.remote import StepError, connect

    known = tmp_path / "known_hosts"
    with loopback_sshd("mt-inv-acceptnew-") as sshd:
        h = host_from(tmp_path / "k.yml", f"a: {{ansible_host: 127.0.0.1, ansible_port: {sshd.port},"
                      f" ansible_user: root, ansible_ssh_private_key_file: {sshd.client_key},"
                      f" ansible_ssh_common_args: '-o StrictHostKeyChecking=accept-new"
                      f" -o UserKnownHostsFile={known}'}}")
        for _ in range(2):  # learnt once, then known
            async with connect(h) as remote:
                assert (await remote.run("echo ok", "echo")).stdout == "ok\n"
        real = sshd.known_hosts.read_text().split()[1:3]
        assert known.read_text().split() == [f"[127.0.0.1]:{sshd.port}", *real]
        other = ssh_keygen_pub(tmp_path / "other")
        known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
        with pytest.raises(StepError) as caught:
            async with connect(h):
                pass
        assert "connect: 127.0.0.1:" in str(caught.value)
        assert known.read_text() == f"[127.0.0.1]:{sshd.port} {other}\n"  # not overwritten


def ssh_keygen_pub(path: Path) -> str:
    from support.sshd import ssh_keygen

    return " ".join(ssh_keygen(path).split()[:2])


def test_command_line_become_is_a_default_the_inventory_overrides(tmp_path: Path) -> None:
    from inventory.cli import become_defaults
    from meshtui.cli import build_parser

    path = write(tmp_path, """\
all:
  hosts:
    a: {}
    b: {ansible_become: false}
    c: {ansible_become_user: mesh, ansible_become_password: pw}
""")
    args = build_parser().parse_args(
        ["deploy", "-i", str(path), "-b", "--become-method", "su", "--become-user", "ops"]
    )
    inv = load_inventory(path, become_defaults(args))
    assert inv.host("a").become == Become("su", "ops", None)
    assert inv.host("b").become is None
    assert inv.host("c").become == Become("su", "mesh", "pw")
    plain = build_parser().parse_args(["upgrade", "-i", str(path)])
    assert become_defaults(plain) == {}
    assert load_inventory(path, become_defaults(plain)).host("a").become is None
    keys = build_parser().parse_args(["keys", "install", "-i", str(path), "-b", "-K", "-f", "2"])
    assert become_defaults(keys) == {"ansible_become": True}
