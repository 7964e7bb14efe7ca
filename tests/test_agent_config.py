"""agent.config: file, environment and flags into frozen dataclasses; bad input named."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest

from agent.config import (
    SECTIONS,
    AgentConfig,
    AgentConfigError,
    all_keys,
    build_config,
    load_config,
    render_toml,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "agent.example.toml"


def test_example_parses_to_the_defaults_and_covers_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    present = {f"{section}.{key}" for section, body in data.items() for key in body}
    assert present == set(all_keys())
    assert build_config(data) == AgentConfig()


def test_every_field_is_documented_with_a_unit() -> None:
    for section in SECTIONS:
        for fld in dataclasses.fields(SECTIONS[section]):
            assert fld.metadata.get("doc"), f"{section}.{fld.name} has no doc"
            assert fld.metadata.get("unit"), f"{section}.{fld.name} has no unit"


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[gossip]\nport = 8000\nprofile = "wan"\n[node]\nlog_level = "debug"\n')
    config = load_config(path, environ={"VXMESH_GOSSIP_PORT": "8001",
                                        "VXMESH_GOSSIP_SEEDS": "10.0.0.1:7946, [fd00::2]:7946"},
                         assignments=["gossip.port=8002"])
    assert config.gossip.port == 8002
    assert config.gossip.profile == "wan"
    assert config.node.log_level == "debug"
    assert config.gossip.seeds == ("10.0.0.1:7946", "[fd00::2]:7946")


def test_render_round_trips() -> None:
    config = build_config({"node": {"name": "h1", "state_dir": "/tmp/x"},
                           "gossip": {"seeds": ["10.0.0.1:7946"], "encrypt": False}})
    assert build_config(tomllib.loads(render_toml(config))) == config


@pytest.mark.parametrize(("data", "named"), [
    ({"gossip": {"port": "seven"}}, "gossip.port"),
    ({"gossip": {"port": 0}}, "gossip.port"),
    ({"gossip": {"prot": 1}}, "gossip.prot"),
    ({"gosip": {}}, "gosip"),
    ({"node": {"log_level": "loud"}}, "node.log_level"),
    ({"underlay": {"address": "10.0.0.300"}}, "underlay.address"),
    ({"gossip": {"seeds": ["nohost"]}}, "gossip.seeds"),
    ({"store": {"endpoints": ["127.0.0.1:2379"]}}, "store.endpoints"),
    ({"store": {"endpoints": ["http://10.0.0.5"]}}, "'http://10.0.0.5' has no port"),
    ({"store": {"endpoints": ["http://10.0.0.5:2379/v3"]}}, "without a path"),
    ({"store": {"endpoints": ["http://u:p@10.0.0.5:2379"]}}, "must not carry credentials"),
    ({"store": {"endpoints": ["http://a:2379", "https://b:2379"]}}, "mixes http:// and https://"),
    ({"store": {"endpoints": []}}, "store.endpoints: give at least one"),
    ({"store": {"ca_file": "/nonexistent/ca.pem"}}, "'/nonexistent/ca.pem' does not"),
    ({"store": {"endpoints": ["https://a:2379"], "cert_file": "/etc/hostname"}},
     "store.key_file: empty, but store.cert_file='/etc/hostname'"),
    ({"store": {"ca_file": "/etc/hostname"}}, "store.ca_file: '/etc/hostname' is set but"),
    ({"store": {"username": "vx"}}, "store.password_file: empty"),
    ({"store": {"member_timeout": 5.0, "timeout": 2.0}}, "store.member_timeout: 5.0 is above"),
    ({"store": {"timeout": "soon"}}, "store.timeout"),
    ({"api": {"socket_mode": "0999"}}, "api.socket_mode"),
    ({"metrics": {"enabled": "yes"}}, "metrics.enabled"),
    ({"wireguard": {"listen_port": 65535}}, "wireguard.listen_port: 65535 is above the maximum"),
    ({"wireguard": {"listen_port": "wg"}}, "wireguard.listen_port"),
    ({"wireguard": {"listen_port": 7945}},
     "wireguard.listen_port: 7945 (and 7946 during a key rotation) collides with gossip.port"),
])
def test_bad_values_are_named(data: dict[str, dict[str, object]], named: str) -> None:
    with pytest.raises(AgentConfigError, match=re.escape(named)):
        build_config(data)


def test_bad_environment_and_flags_are_named() -> None:
    with pytest.raises(AgentConfigError, match="VXMESH_GOSIP_PORT"):
        load_config(None, environ={"VXMESH_GOSIP_PORT": "1"})
    with pytest.raises(AgentConfigError, match=re.escape("metrics.port")):
        load_config(None, environ={}, assignments=["metrics.port=http"])
    with pytest.raises(AgentConfigError, match=re.escape("expected section.key=value")):
        load_config(None, environ={}, assignments=["metrics.port"])


def test_missing_explicit_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(AgentConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_derived_values() -> None:
    config = build_config({"node": {"name": "h1", "state_dir": "/s"}})
    assert config.node_name == "h1"
    assert config.keyring_path == Path("/s/keyring.json")
    assert config.socket_mode_bits == 0o660


def test_agent_refuses_to_start_on_a_bad_key_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.api.errors import EXIT_USAGE
    from agent.cli.main import main

    for name in [n for n in os.environ if n.startswith("VXMESH_")]:
        monkeypatch.delenv(name)

    bad = tmp_path / "agent.toml"
    bad.write_text('[gossip]\nport = 7946\nprofil = "lan"\n')
    assert main(["agent", "--config", str(bad)]) == EXIT_USAGE
    assert "gossip.profil" in capsys.readouterr().err
    assert main(["agent", "--config", str(tmp_path / "absent.toml")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
