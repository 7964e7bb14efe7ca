"""`vxmesh agent` start-up failures an operator can cause: one line naming the key and the
value, exit 2 for usage, 1 for the environment, no traceback.

Each case runs the real `vxmesh agent --config ...` of this tree's venv as a process inside a
throw-away network namespace (`eth0` 10.98.0.1/24, one end of a veth pair whose other end stays
in the namespace, nothing else: no etcd, no peers),
with its own state directory and control socket under the test's tmp_path.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.lab.namespaces import NetnsLab, run
from agent.runtime.errors import MissingKernelFeature
from agent.runtime.process import EXIT_ENVIRONMENT, EXIT_USAGE, startup_failure
from underlay.netns_exec import ip_netns_exec

pytestmark = pytest.mark.kernel

VXMESH = str(Path(sys.executable).with_name("vxmesh"))
RUN_TIMEOUT = 60.0


@dataclass
class Host:
    netns: str
    tmp: Path

    def config(self, **sections: dict[str, object]) -> Path:
        """A config file: the defaults below, updated by `sections`."""
        base: dict[str, dict[str, object]] = {
            "node": {"name": "s1", "state_dir": str(self.tmp / "state"), "log_level": "error"},
            "underlay": {"interface": "eth0"},
            "gossip": {"encrypt": False},
            "store": {"endpoints": ["http://127.0.0.1:2379"], "timeout": 0.5,
                      "member_timeout": 0.5},
            "api": {"socket": str(self.tmp / "agent.sock")},
        }
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        lines = []
        for name, values in base.items():
            lines.append(f"[{name}]")
            lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        path = self.tmp / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def agent(self, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ip_netns_exec(self.netns, [VXMESH, "agent", "--config",
                                                         str(config), *extra]),
                              capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, check=False)

    def hold_port(self, kind: str, address: str, port: int) -> subprocess.Popen[str]:
        """A process in the namespace holding `address:port` (tcp or udp) until stopped."""
        proc = subprocess.Popen(
            ip_netns_exec(self.netns, [sys.executable, "-c", HOLDER, kind, address,
                                       str(port)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "bound"
        return proc


HOLDER = """
import socket, sys
kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = socket.socket(type=socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
sock.bind((address, port))
if kind == "tcp":
    sock.listen()
print("bound", flush=True)
sys.stdin.read()
"""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value) + '"'


@pytest.fixture
def host(netns_lab: NetnsLab, tmp_path: Path) -> Iterator[Host]:
    netns = netns_lab.ns("h")
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"], netns=netns)
    run(["ip", "addr", "add", "10.98.0.1/24", "dev", "eth0"], netns=netns)
    for link in ("eth0", "eth0peer"):
        run(["ip", "link", "set", link, "up"], netns=netns)
    yield Host(netns, tmp_path)


def one_line(done: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The run printed exactly one line holding every part, and exited with `code`."""
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert done.returncode == code, (done.returncode, lines[0])
    return lines[0]


def test_a_bad_config_value(host: Host) -> None:
    done = host.agent(host.config(), "--set", "metrics.port=70000")
    one_line(done, EXIT_USAGE, "metrics.port", "70000")


def test_a_malformed_etcd_url(host: Host) -> None:
    done = host.agent(host.config(store={"endpoints": ["http://127.0.0.1:twothree"]}))
    one_line(done, EXIT_USAGE, "store.endpoints", "http://127.0.0.1:twothree")


def test_an_unreadable_keyring(host: Host) -> None:
    keyring = host.tmp / "keyring.json"
    keyring.write_text("{not json")
    done = host.agent(host.config(gossip={"encrypt": True, "keyring_file": str(keyring)}))
    one_line(done, EXIT_USAGE, str(keyring))
    keyring.unlink()  # and a missing one names the key that asks for it
    done = host.agent(host.config(gossip={"encrypt": True, "keyring_file": str(keyring)}))
    one_line(done, EXIT_USAGE, "gossip.encrypt", str(keyring))


def test_a_bad_state_dir(host: Host) -> None:
    (host.tmp / "file").write_text("")
    state = host.tmp / "file" / "state"
    done = host.agent(host.config(node={"state_dir": str(state)}))
    one_line(done, EXIT_USAGE, "node.state_dir", str(state))


def test_a_missing_interface(host: Host) -> None:
    done = host.agent(host.config(underlay={"interface": "nope0"}))
    one_line(done, EXIT_ENVIRONMENT, "underlay.interface='nope0'", "no such interface")
    done = host.agent(host.config(underlay={"interface": "", "address": "10.98.0.9"}))
    one_line(done, EXIT_ENVIRONMENT, "underlay.address='10.98.0.9'")


def test_a_port_in_use_or_an_address_not_here(host: Host) -> None:
    holder = host.hold_port("tcp", "0.0.0.0", 9476)
    try:
        done = host.agent(host.config(metrics={"port": 9476}))
    finally:
        holder.kill()
        holder.wait(timeout=10)
    one_line(done, EXIT_ENVIRONMENT, "metrics.port=9476", "in use")
    done = host.agent(host.config(metrics={"address": "10.98.0.77"}))
    one_line(done, EXIT_ENVIRONMENT, "metrics.address='10.98.0.77'")
    # The gossip port: etcd is not needed once this host has a copy of the networks.
    (host.tmp / "state").mkdir(exist_ok=True)
    (host.tmp / "state" / "networks.json").write_text("{}")
    holder = host.hold_port("udp", "10.98.0.1", 7946)
    try:
        done = host.agent(host.config(metrics={"enabled": False}, gossip={"port": 7946}))
    finally:
        holder.kill()
        holder.wait(timeout=10)
    one_line(done, EXIT_ENVIRONMENT, "gossip.port=7946", "10.98.0.1")


def test_etcd_unreachable_on_a_first_start(host: Host) -> None:
    done = host.agent(host.config(store={"endpoints": ["http://127.0.0.1:2379"],
                                         "timeout": 0.5}))
    one_line(done, EXIT_ENVIRONMENT, "store.endpoints='http://127.0.0.1:2379'", "0.5 s")


def test_an_underlay_that_cannot_segment_vxlan_is_named_at_start(host: Host) -> None:
    run(["ethtool", "-K", "eth0", "tx-udp_tnl-csum-segmentation", "off"], netns=host.netns)
    done = host.agent(host.config(node={"log_level": "warning"}))
    assert "Traceback" not in done.stderr, done.stderr
    assert "underlay eth0: tx-udp_tnl-csum-segmentation is off" in done.stderr, done.stderr
    assert "ethtool -K eth0 tx-udp_tnl-csum-segmentation on" in done.stderr
    assert done.returncode == EXIT_ENVIRONMENT  # then stopped by the unreachable etcd


def test_a_missing_kernel_feature_and_unknown_errors_at_the_process_edge() -> None:
    """The kernel's features cannot be removed from a test: the edge's mapping is checked on
    the error `build_components` raises, wrapped as trio's nurseries wrap it."""
    group = BaseExceptionGroup("nursery", [ExceptionGroup("inner", [
        MissingKernelFeature("kernel feature vxlan: module not available")])])
    failure = startup_failure(group)
    assert failure is not None
    assert (failure.code, failure.reason) == (EXIT_ENVIRONMENT,
                                              "kernel feature vxlan: module not available")
    assert startup_failure(ExceptionGroup("nursery", [ValueError("a bug")])) is None
    assert startup_failure(ExceptionGroup("nursery", [
        MissingKernelFeature("x"), KeyError("a bug")])) is None
