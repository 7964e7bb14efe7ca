"""deploy/: the systemd unit, Prometheus files, Grafana dashboard and Vagrant lab are valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfigError, load_config
from agent.lab.provision import interface_for_address, main, node_config
from agent.runtime.metrics import AgentMetrics, MetricsSnapshot

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bash deploy/setup.sh --test installs it)")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _exposed_names() -> set[str]:
    text = AgentMetrics(MetricsSnapshot).exposition().decode()
    return _referenced_names(" ".join(re.findall(r"^# TYPE (\S+)", text, re.M)))


def _referenced_names(text: str) -> set[str]:
    names = set(re.findall(r"\b(vxmesh_[a-z_]+)", text))
    return {re.sub(r"_(bucket|total|count|sum)$", "", n) for n in names}


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = _tool("systemd-analyze")
    unit = (DEPLOY / "systemd" / "vxmesh-agent.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=on-failure" in unit
    # verify checks that ExecStart exists: point it at this checkout's console script.
    local = unit.replace("/usr/local/bin/vxmesh", str(Path(sys.executable).parent / "vxmesh"))
    (tmp_path / "vxmesh-agent.service").write_text(local)
    _run([tool, "verify", str(tmp_path / "vxmesh-agent.service")])


def test_prometheus_config_and_rules_pass_promtool() -> None:
    tool = _tool("promtool")
    _run([tool, "check", "config", "prometheus.yml"], cwd=DEPLOY / "prometheus")
    _run([tool, "check", "rules", "vxmesh-alerts.yml"], cwd=DEPLOY / "prometheus")


def test_alerts_and_dashboard_use_only_exposed_metrics() -> None:
    exposed = _exposed_names()
    rules = (DEPLOY / "prometheus" / "vxmesh-alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "vxmesh-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert _referenced_names(rules) <= exposed, _referenced_names(rules) - exposed
    assert _referenced_names(exprs) <= exposed, _referenced_names(exprs) - exposed
    assert len(_referenced_names(exprs)) >= 12


def test_vagrantfile_validates_and_provisioning_passes_shellcheck(tmp_path: Path) -> None:
    vagrant = _tool("vagrant")
    shellcheck = _tool("shellcheck")
    _run([shellcheck, str(DEPLOY / "setup.sh"),
          *(str(DEPLOY / "vagrant" / name)
            for name in ("provision.sh", "build-box.sh", "libvirt-netns.sh"))])
    copy = tmp_path / "deploy" / "vagrant"
    copy.mkdir(parents=True)
    for name in ("Vagrantfile", "provision.sh"):
        shutil.copy(DEPLOY / "vagrant" / name, copy / name)
    _run([vagrant, "validate", "--ignore-provider"], cwd=copy)


IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.0.2.15"}]},
    {"ifname": "eth1", "addr_info": [{"family": "inet", "local": "192.168.56.12"},
                                     {"family": "inet6", "local": "fe80::1"}]},
]


def test_vagrant_node_config_picks_the_private_network_interface() -> None:
    assert interface_for_address(IP_ADDR, "192.168.56.12") == "eth1"
    with pytest.raises(AgentConfigError, match=re.escape("192.168.56.99")):
        interface_for_address(IP_ADDR, "192.168.56.99")
    config = node_config(name="node2", address="192.168.56.12", interface="eth1",
                         etcd=["http://192.168.56.11:2379"],
                         seeds=["192.168.56.11:7946", "192.168.56.13:7946"])
    assert config.underlay.interface == "eth1"
    assert config.gossip.seeds == ("192.168.56.11:7946", "192.168.56.13:7946")


def test_provision_main_writes_a_config_the_agent_loads(tmp_path: Path) -> None:
    # The machine's own loopback address stands in for the private-network address.
    out = tmp_path / "agent.toml"
    assert main(["--name", "node1", "--address", "127.0.0.1", "--etcd",
                 "http://127.0.0.1:2379", "--seed", "127.0.0.1:7946",
                 "--output", str(out)]) == 0
    config = load_config(out, environ={})
    assert config.node.name == "node1" and config.underlay.interface == "lo"
    assert main(["--name", "node1", "--address", "192.0.2.77", "--etcd",
                 "http://127.0.0.1:2379", "--output", str(out)]) == 2
