"""RuntimeConfig: documented fields, profiles, and the [runtime] TOML table."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.runtime_config import RuntimeConfig


def test_every_field_is_documented_with_its_unit_and_default() -> None:
    source = inspect.getsource(RuntimeConfig)
    for f in dataclasses.fields(RuntimeConfig):
        doc = source.split(f"    {f.name}:", 1)[1].split('"""')[1]
        assert "Seconds" in doc and "default" in doc, f.name


def test_profiles_and_the_runtime_table(tmp_path: Path) -> None:
    assert load_config(None, {"insecure_no_key": True}, "local").runtime == RuntimeConfig.local()
    assert load_config(None, {"insecure_no_key": True}, "lan").runtime.task_lease == 10.0
    toml = tmp_path / "agent.toml"
    toml.write_text("[runtime]\ntask_lease = 4\nbootstrap_grace = 2.5\n")
    config = load_config(str(toml), {"insecure_no_key": True}, "lan")
    assert (config.runtime.task_lease, config.runtime.bootstrap_grace) == (4.0, 2.5)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[runtime]\ntask_lease = -1\n", "runtime.task_lease"),
        ("[runtime]\nbid_timeout = 1.0\n", "runtime.bid_timeout"),
        ("[runtime]\nlease = 3\n", "runtime.lease"),
        ('[runtime]\nread_timeout = "3"\n', "runtime.read_timeout"),
    ],
)
def test_a_bad_runtime_value_names_the_field(tmp_path: Path, body: str, field: str) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(str(toml), {"insecure_no_key": True}, "lan")
    assert field in str(err.value)
