"""Parser tests: YAML and INI inventories, precedence, ranges, vars dirs, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from inventory import InventoryError, load_inventory
from inventory.ranges import RangeError, expand_host_range

EXAMPLES = Path(__file__).resolve().parents[2] / "inventory" / "examples"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


NESTED_YAML = """
all:
  vars:
    mesh_cluster: lab
    mesh_slots: 1
    level: all
  hosts:
    lone:
  children:
    prod:
      vars:
        level: prod
        mesh_slots: 2
      children:
        web:
          vars:
            level: web
          hosts:
            web[01:03]:
            web02:
              level: host
              mesh_seed: yes
        db:
          hosts:
            db01: {ansible_host: 198.18.0.5, ansible_port: 2222, ansible_user: admin}
"""

NESTED_INI = """
lone

[web]
web[01:03]
web02 level=host mesh_seed=yes

[db]
db01 ansible_host=198.18.0.5 ansible_port=2222 ansible_user=admin

[prod:children]
web
db

[prod:vars]
level=prod
mesh_slots=2

[web:vars]
level=web

[all:vars]
mesh_cluster=lab
mesh_slots=1
level=all
"""


@pytest.fixture(params=["yml", "ini"])
def nested(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    text = NESTED_YAML if request.param == "yml" else NESTED_INI
    return write(tmp_path, f"inv.{request.param}", text)


def test_nested_children_and_groups(nested: Path) -> None:
    inv = load_inventory(nested)
    names = list(inv.hosts)
    assert sorted(names) == ["db01", "lone", "web01", "web02", "web03"]
    assert set(inv.groups["prod"]) == {"web01", "web02", "web03", "db01"}
    assert set(inv.groups["web"]) == {"web01", "web02", "web03"}
    assert inv.groups["ungrouped"] == ("lone",)
    assert set(inv.host("web01").groups) == {"all", "prod", "web"}


def test_var_precedence_host_over_child_over_parent_over_all(nested: Path) -> None:
    inv = load_inventory(nested)
    assert inv.host("web02").vars["level"] == "host"
    assert inv.host("web01").vars["level"] == "web"
    assert inv.host("db01").vars["level"] == "prod"
    assert inv.host("lone").vars["level"] == "all"
    assert inv.host("web01").slots == 2
    assert inv.host("lone").slots == 1
    assert inv.host("web02").seed is True
    assert inv.host("web01").seed is False


def test_connection_vars_and_defaults(nested: Path) -> None:
    inv = load_inventory(nested)
    db = inv.host("db01")
    assert (db.address, db.ssh_port, db.user) == ("198.18.0.5", 2222, "admin")
    assert db.advertise == "198.18.0.5"
    assert db.seed_address == "198.18.0.5:7900"
    web = inv.host("web01")
    assert (web.address, web.ssh_port, web.user) == ("web01", 22, None)
    assert web.advertise == ""
    assert (web.prefix, web.data_dir, web.mesh_port, web.cluster) == (
        "/opt/meshtui",
        "/var/lib/mesh-agent",
        7900,
        "lab",
    )
    assert web.config_path == "/etc/mesh-agent/agent.toml"


def test_same_depth_groups_merge_by_priority_then_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inv.yml",
        """
        all:
          children:
            alpha: {hosts: {h1:}, vars: {x: alpha}}
            beta: {hosts: {h1:}, vars: {x: beta}}
            gamma: {hosts: {h2:}, vars: {x: gamma, ansible_group_priority: 5}}
            delta: {hosts: {h2:}, vars: {x: delta}}
        """,
    )
    inv = load_inventory(path)
    assert inv.host("h1").vars["x"] == "beta"  # same depth and priority: later name wins
    assert inv.host("h2").vars["x"] == "gamma"  # higher priority wins


def test_mesh_vars_types_from_yaml_and_ini(tmp_path: Path) -> None:
    y = write(
        tmp_path,
        "a.yml",
        """
        all:
          hosts:
            h1:
              mesh_capabilities: [gpu, ssd]
              mesh_slots: 8
              mesh_seed: true
              mesh_prefix: /srv/mesh/
              mesh_data_dir: /data/mesh
              mesh_port: 7911
              mesh_cluster: blue
        """,
    )
    i = write(
        tmp_path,
        "b.ini",
        """
        h1 mesh_capabilities=gpu,ssd mesh_slots=8 mesh_seed=True mesh_prefix=/srv/mesh/ \
        mesh_data_dir=/data/mesh mesh_port=7911 mesh_cluster=blue
        """,
    )
    for path in (y, i):
        h = load_inventory(path).host("h1")
        assert h.capabilities == ("gpu", "ssd")
        assert (h.slots, h.seed, h.prefix, h.data_dir, h.mesh_port, h.cluster) == (
            8,
            True,
            "/srv/mesh",
            "/data/mesh",
            7911,
            "blue",
        )
        assert h.venv == "/srv/mesh/venv"


def test_ini_host_port_quoting_and_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inv.ini",
        """
        # comment
        ; another
        [web]
        web1:2201 motd="hello world" n=3  # trailing comment
        [web:vars]
        items=['a', 'b']
        """,
    )
    h = load_inventory(path).host("web1")
    assert h.ssh_port == 2201
    assert h.vars["motd"] == "hello world"
    assert h.vars["n"] == 3
    assert h.vars["items"] == ["a", "b"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("web[01:03]", ["web01", "web02", "web03"]),
        ("web[1:3]", ["web1", "web2", "web3"]),
        ("web[8:11]", ["web8", "web9", "web10", "web11"]),
        ("db-[a:c]", ["db-a", "db-b", "db-c"]),
        ("n[0:10:5]", ["n0", "n5", "n10"]),
        ("r[1:2]-[a:b].lan", ["r1-a.lan", "r1-b.lan", "r2-a.lan", "r2-b.lan"]),
        ("plain", ["plain"]),
    ],
)
def test_host_ranges(pattern: str, expected: list[str]) -> None:
    assert expand_host_range(pattern) == expected


@pytest.mark.parametrize("pattern", ["web[3:1]", "web[a:3]", "web[1:3:0]", "web[1:", "web[ab:c]"])
def test_bad_host_ranges(pattern: str) -> None:
    with pytest.raises(RangeError):
        expand_host_range(pattern)


def test_group_vars_and_host_vars_dirs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inv.yml",
        """
        all:
          children:
            web:
              hosts: {web1:, web2:}
              vars: {x: inline, y: inline}
        """,
    )
    write(tmp_path, "group_vars/web.yml", "x: from-file\nmesh_slots: 3\n")
    write(tmp_path, "group_vars/all/main.yaml", "mesh_cluster: fromdir\n")
    write(tmp_path, "host_vars/web2", "x: host-file\n")
    inv = load_inventory(path)
    assert inv.host("web1").vars["x"] == "from-file"
    assert inv.host("web1").vars["y"] == "inline"
    assert inv.host("web2").vars["x"] == "host-file"
    assert inv.host("web1").slots == 3
    assert inv.host("web2").cluster == "fromdir"


def test_examples_parse_and_agree() -> None:
    yml = load_inventory(EXAMPLES / "lan.yml")
    ini = load_inventory(EXAMPLES / "lan.ini")
    assert len(yml.hosts) == 3
    for a in yml.hosts.values():
        b = ini.host(a.name)
        assert (a.address, a.capabilities, a.slots, a.seed, a.cluster, a.user) == (
            b.address,
            b.capabilities,
            b.slots,
            b.seed,
            b.cluster,
            b.user,
        )
    assert [h.name for h in yml.hosts.values() if h.seed] == ["web01", "db01"]


def test_format_sniffed_without_extension(tmp_path: Path) -> None:
    y = write(tmp_path, "hosts_yaml", "all:\n  hosts:\n    a:\n")
    i = write(tmp_path, "hosts_ini", "[g]\na x=1\n")
    assert list(load_inventory(y).hosts) == ["a"]
    assert load_inventory(i).host("a").vars["x"] == 1


# ---- errors: one line, file and line number --------------------------------------------


YAML_ERRORS = [
    (
        "all:\n  children:\n    web:\n      hots:\n        a:\n",
        4,
        "unknown key 'hots' in group 'web'",
    ),
    ("all:\n  hosts: [a, b]\n", 2, "'hosts' of group 'all' must be a mapping"),
    ("all:\n  vars: [1]\n", 2, "'vars' of group 'all' must be a mapping"),
    ("all:\n  children: [web]\n", 2, "'children' of group 'all' must be a mapping"),
    ("web: [a]\n", 1, "group 'web' must be a mapping"),
    ("- a\n- b\n", 1, "must be a mapping of groups"),
    ("all:\n  hosts:\n    a: 3\n", 3, "host 'a' must map to variables"),
    ("all:\n  hosts:\n    a:\n    a:\n", 4, "duplicate key 'a'"),
    ("all:\n  hosts:\n    a: {x: [1, 2}\n", 3, ""),
    ("all:\n  hosts:\n    web[3:1]:\n", 3, "after its end"),
    ("all:\n  hosts:\n    a:\n      bad-name: 1\n", 4, "invalid variable name 'bad-name'"),
    ("plugin: aws_ec2\n", 1, "plugins are not supported"),
    ("all:\n  hosts:\n    a:\n      mesh_slots: many\n", 4, "mesh_slots must be an integer"),
    ("all:\n  hosts:\n    a:\n      mesh_port: 70000\n", 4, "mesh_port must be an integer"),
    ("all:\n  hosts:\n    a:\n      mesh_seed: maybe\n", 4, "mesh_seed must be a boolean"),
    ("all:\n  hosts:\n    a:\n      mesh_prefix: opt\n", 4, "mesh_prefix must be an absolute"),
    ("all:\n  hosts:\n    a:\n      mesh_capabilities: 5\n", 4, "mesh_capabilities must be"),
    ("all:\n  vars:\n    ansible_port: x\n  hosts:\n    a:\n", 3, "ansible_port must be"),
    (
        "all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n",
        7,
        "cycle",
    ),
    ("all:\n  children:\n    web:\n  hosts:\n    web:\n", 5, "already a group"),
    ("all:\n  children:\n    bad name:\n", 3, "invalid group name 'bad name'"),
    ("all:\n  hosts:\n    '!h':\n", 3, "invalid host name '!h'"),
    ("web:\n  children:\n    all:\n", 3, "group 'all' cannot be a child of 'web'"),
    ("web:\n  children:\n    web:\n", 3, "cannot be its own child"),
    ("web:\n  vars: {ansible_group_priority: high}\n  hosts: {a:}\n", 2, "ansible_group_priority"),
    ("all:\n  hosts:\n    a: {mesh_cluster: 'two words'}\n", 3, "mesh_cluster must be a name"),
    ("all:\n  hosts:\n    a: {mesh_profile: wan}\n", 3, "mesh_profile must be 'lan' or 'local'"),
    ("all:\n  hosts:\n    a: {mesh_python: [python3]}\n", 3, "mesh_python must be text"),
    ("all:\n  hosts:\n    a: {mesh_data_dir: /}\n", 3, "an absolute path other than /"),
    ("all:\n  hosts:\n    a: {ansible_host_key_checking: sometimes}\n", 3, "must be a boolean"),
]


@pytest.mark.parametrize(("text", "line", "reason"), YAML_ERRORS)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert reason in message
    assert "\n" not in message
    assert info.value.line == line


INI_ERRORS = [
    ("[web:kids]\na\n", 1, "invalid section [web:kids]"),
    ("[web\na\n", 1, "malformed section header"),
    ("[web:vars]\nx=1\n", 1, "undefined group 'web'"),
    ("[web]\na\n[web:vars]\nnovalue\n", 4, "expected key=value in [web:vars]"),
    ("[web]\na novalue\n", 2, "expected key=value after host 'a'"),
    ("[web]\na x='unterminated\n", 2, "cannot split host line"),
    ("[web]\nw[1:a]\n", 2, "range bounds"),
    ("[p:children]\nweb db\n", 2, "expected one group name"),
    ("[a:children]\nb\n[b:children]\na\n", 4, "cycle"),
    ("[web]\na mesh_slots=-1\n", 2, "mesh_slots must be an integer"),
    ("[web]\na\n[a]\nb\n", 3, "already a host"),
    ("[g]\nh\n[g:vars]\n1x=2\n", 4, "invalid variable name"),
]


@pytest.mark.parametrize(("text", "line", "reason"), INI_ERRORS)
def test_ini_errors_name_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "inv.ini"
    path.write_text(text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert reason in message
    assert "\n" not in message


def test_missing_file_and_bad_vars_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"nope\.yml: no such file"):
        load_inventory(tmp_path / "nope.yml")
    path = write(tmp_path, "inv.yml", "all:\n  hosts:\n    a:\n")
    write(tmp_path, "host_vars/a.yml", "x: 1\nmesh_slots: lots\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert str(info.value).startswith(f"{tmp_path / 'host_vars' / 'a.yml'}:2: ")
    write(tmp_path, "host_vars/a.yml", "- just\n- a list\n")
    with pytest.raises(InventoryError, match=r"a\.yml:1: a vars file must be a mapping"):
        load_inventory(path)


def test_error_is_a_config_error_for_the_cli() -> None:
    from agent.errors import ConfigError

    assert issubclass(InventoryError, ConfigError)


def test_legacy_ssh_aliases_and_python_interpreter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inv.ini",
        """
        old ansible_ssh_host=10.1.1.1 ansible_ssh_port=2200 ansible_ssh_user=ops
        new ansible_host=10.1.1.2 ansible_ssh_host=ignored ansible_port=22 ansible_ssh_port=99
        [all:vars]
        ansible_python_interpreter=/usr/bin/python3.11
        """,
    )
    inv = load_inventory(path)
    old, new = inv.host("old"), inv.host("new")
    assert (old.address, old.ssh_port, old.user) == ("10.1.1.1", 2200, "ops")
    assert (new.address, new.ssh_port) == ("10.1.1.2", 22)
    assert old.python == "/usr/bin/python3.11"
