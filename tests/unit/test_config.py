"""Config: profiles, TOML file, flag precedence, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from agent.config import load_config, load_or_create_node_id, parse_host_port
from agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_profiles_differ_and_validate(tmp_path: Path) -> None:
    lan = load_config(None, {"insecure_no_key": True}, "lan")
    local = load_config(None, {"insecure_no_key": True}, "local")
    assert lan.swim.probe_interval == 1.0
    assert local.swim.probe_interval < lan.swim.probe_interval
    assert local.mdns is False and local.bind == "127.0.0.1"


def test_file_then_flags_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name = "web1"\nport = 7001\ncaps = ["gpu"]\ninsecure_no_key = true\n'
        "[swim]\nprobe_interval = 2\n",
    )
    cfg = load_config(path, {"port": 7002}, None)
    assert cfg.name == "web1"
    assert cfg.port == 7002  # the flag wins over the file
    assert cfg.caps == ("gpu",)
    assert cfg.swim.probe_interval == 2.0  # an int in TOML is accepted for a float field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("port = 70000\ninsecure_no_key = true\n", "port"),
        ('port = "x"\ninsecure_no_key = true\n', "port"),
        ("bogus = 1\ninsecure_no_key = true\n", "bogus"),
        ("insecure_no_key = true\n[swim]\nnope = 1\n", "swim.nope"),
        ("insecure_no_key = true\nswim = 3\n", "swim"),
        ('insecure_no_key = true\njoin = ["nohostport"]\n', "join"),
        ("insecure_no_key = true\nmax_voters = 4\n", "max_voters"),
        ("port = [\n", "config"),
        ("name = 'a b'\ninsecure_no_key = true\n", "name"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {}, None)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_missing_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, "local")
    assert info.value.field == "key_file"
    assert "keygen" in str(info.value)


def test_node_id_is_created_once(tmp_path: Path) -> None:
    first = load_or_create_node_id(str(tmp_path))
    assert len(first) == 32
    assert load_or_create_node_id(str(tmp_path)) == first
    (tmp_path / "node_id").write_text("garbage\n")
    with pytest.raises(ConfigError, match="malformed node id"):
        load_or_create_node_id(str(tmp_path))


@pytest.mark.parametrize("value", ["host", "host:", ":80", "h:0", "h:99999", "h:x"])
def test_parse_host_port_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(value)


def test_cli_bad_flag_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        agent_main(["run", "--port", "notanumber"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--port" in err


def test_cli_bad_value_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = agent_main(["run", "--port", "70000", "--insecure-no-key", "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "mesh-agent: config error: port: must be 0-65535, got 70000"


def test_keygen_prints_a_usable_key() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    import base64

    assert len(base64.b64decode(out)) == 32
