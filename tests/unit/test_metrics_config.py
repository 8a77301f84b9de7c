"""Issue 15: ``[metrics]`` -- documented fields, the TOML table, ``--metrics-addr``."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from agent.cli import build_parser, overrides_from_args
from agent.config import load_config
from agent.errors import ConfigError
from agent.metrics.config import MetricsConfig


def test_every_field_is_documented_with_its_default() -> None:
    source = inspect.getsource(MetricsConfig)
    for f in dataclasses.fields(MetricsConfig):
        doc = source.split(f"    {f.name}:", 1)[1].split('"""')[1]
        assert "default" in doc, f.name


def test_off_by_default_and_set_by_the_table_or_the_flag(tmp_path: Path) -> None:
    assert load_config(None, {"insecure_no_key": True}, "lan").metrics == MetricsConfig()
    toml = tmp_path / "agent.toml"
    toml.write_text('[metrics]\naddr = "127.0.0.1:9464"\npersist_interval = 30\n')
    config = load_config(str(toml), {"insecure_no_key": True}, "local")
    assert (config.metrics.addr, config.metrics.persist_interval) == ("127.0.0.1:9464", 30.0)
    args = build_parser().parse_args(["run", "--metrics-addr", "0.0.0.0:9100"])
    config = load_config(str(toml), {**overrides_from_args(args), "insecure_no_key": True}, "local")
    assert config.metrics.addr == "0.0.0.0:9100" and config.metrics.persist_interval == 30.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[metrics]\naddr = "9464"\n', "metrics.addr"),
        ('[metrics]\naddr = "host:99999"\n', "metrics.addr"),
        ("[metrics]\npersist_interval = 0.1\n", "metrics.persist_interval"),
        ("[metrics]\nmax_scrapers = 0\n", "metrics.max_scrapers"),
        ("[metrics]\nport = 1\n", "metrics.port"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(str(toml), {"insecure_no_key": True}, "lan")
    assert str(err.value).startswith(field)
