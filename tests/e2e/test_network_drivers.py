"""End to end: network drivers other than overlay, through a real 2-host lab and the CLI.

macvlan on the hosts' underlay interface: endpoints take their address from the shared IPAM
(two hosts never hand out the same one, from the --ip-range), the subnet's prefix and a
default route via the network's gateway, which lives on the underlay (an address of the lab's
switch). Who must not reach whom: an endpoint of another macvlan network (the switch does not
route). On a VLAN parent (`--parent eth0.30`) the agent makes the 802.1Q sub-interface on
first use and removes it with the last endpoint; on a kernel without 8021q the create is
refused naming the module, and that part skips with the reason. Bad combinations are refused
before anything is made, naming the flag and the value. Traffic stays inside the lab's
namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from agent.api.errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from agent.cli.main import main
from agent.lab.hosts import Lab, LabHost, LabState
from agent.lab.probe_stream import ProbeStream
from underlay.netns_exec import ip_netns_exec

pytestmark = [pytest.mark.kernel, pytest.mark.etcd, pytest.mark.slow]

VLAN30 = "10.230.0.0/24"
VLAN31 = "10.231.0.0/24"
VLAN32 = "10.232.0.0/24"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, LabState]]:
    if shutil.which("etcd") is None:
        pytest.skip("needs the etcd server binary (Debian package etcd-server)")
    the_lab = Lab(tmp_path_factory.mktemp("lab17"), prefix=f"d17{os.getpid() % 1000}")
    try:
        state = the_lab.up(2)
        # The gateways of both networks: a router on the underlay (the switch, which does
        # not forward between them: a new namespace has ip_forward 0).
        for gateway in ("10.230.0.1/24", "10.231.0.1/24"):
            subprocess.run(ip_netns_exec(state.switch, ["ip", "addr", "add", gateway, "dev",
                                                        "br0"]), check=True, timeout=10)
        yield the_lab, state
    finally:
        the_lab.down()


def _cli(host: LabHost, *args: str) -> int:
    return main([*args, "--socket", str(host.socket), "--json"])


def _ep(lab: Lab, host: LabHost, name: str) -> dict[str, Any]:
    record: dict[str, Any] = lab.client(host).request("GET", f"/v1/endpoints/{name}")
    return record


def _in(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ip_netns_exec(netns, list(argv)), capture_output=True, text=True,
                          timeout=30)


def _ping(src: dict[str, Any], ip: str) -> bool:
    return _in(src["netns"], "ping", "-n", "-c", "1", "-W", "2", ip).returncode == 0


def _link_exists(host: LabHost, name: str) -> bool:
    return _in(host.netns, "ip", "link", "show", name).returncode == 0


def test_bad_combinations_are_refused_naming_the_flag(
        lab: tuple[Lab, LabState], capsys: pytest.CaptureFixture[str]) -> None:
    the_lab, state = lab
    h1 = state.hosts[0]
    cases = [
        (["--driver", "overlay", "--subnet", "10.240.0.0/24", "--parent", "eth0"],
         "parent='eth0'"),
        (["--driver", "macvlan", "--subnet", "10.240.0.0/24", "--gateway", "10.9.0.1"],
         "gateway='10.9.0.1'"),
        (["--driver", "macvlan", "--subnet", "10.240.0.0/24", "--ip-range", "10.241.0.0/28"],
         "ip_range='10.241.0.0/28'"),
        (["--driver", "macvlan", "--subnet", "10.240.0.0/24", "--parent", "eth0.4095"],
         "parent='eth0.4095'"),
        (["--driver", "macvlan", "--subnet", "10.240.0.0/24", "--parent", "nosuch0"],
         "parent='nosuch0'"),
    ]
    for flags, named in cases:
        capsys.readouterr()
        assert _cli(h1, "network", "create", "bad", *flags) == EXIT_USAGE, flags
        assert named in capsys.readouterr().err, flags
    capsys.readouterr()
    if _cli(h1, "network", "create", "iv", "--driver", "ipvlan", "--subnet",
            "10.240.0.0/24") == EXIT_USAGE:  # this kernel: no ipvlan, the module is named
        assert "driver='ipvlan'" in (err := capsys.readouterr().err), err
        assert "kernel module ipvlan" in err, err
    else:
        assert _cli(h1, "network", "delete", "iv") == EXIT_OK
    assert not [n for n in the_lab.client(h1).request("GET", "/v1/networks")
                if n["name"] in ("bad", "iv")]
    assert not _link_exists(h1, "eth0.4095")


def test_macvlan_across_hosts_with_prefix_gateway_and_shared_ipam(
        lab: tuple[Lab, LabState], capsys: pytest.CaptureFixture[str]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    assert _cli(h1, "network", "create", "pub", "--driver", "macvlan", "--subnet", VLAN30,
                "--gateway", "10.230.0.1", "--ip-range", "10.230.0.64/26") == EXIT_OK
    assert _cli(h1, "network", "create", "other", "--driver", "macvlan", "--subnet", VLAN31,
                "--gateway", "10.231.0.1", "--parent", "eth0") == EXIT_OK
    made = [(h1, "m1"), (h2, "m2"), (h2, "o2")]
    try:
        for host, name, network in ((h1, "m1", "pub"), (h2, "m2", "pub"),
                                    (h2, "o2", "other")):
            assert _cli(host, "endpoint", "create", name, "--network", network) == EXIT_OK
        m1, m2, o2 = _ep(the_lab, h1, "m1"), _ep(the_lab, h2, "m2"), _ep(the_lab, h2, "o2")
        assert m1["mode"] == m2["mode"] == "macvlan"
        assert m1["ip"] != m2["ip"]  # one IPAM for both hosts, from the ip-range
        assert all(ep["ip"].startswith("10.230.0.") and int(ep["ip"].split(".")[3]) >= 64
                   for ep in (m1, m2))
        assert m1["addresses"] == [f"{m1['ip']}/24"]
        route = _in(m1["netns"], "ip", "route", "show", "default").stdout
        assert "via 10.230.0.1" in route, route
        assert _ping(m1, m2["ip"])  # the other host's endpoint, on the underlay
        assert _ping(m1, "10.230.0.1")  # the gateway on the underlay
        assert _ping(o2, "10.231.0.1")
        assert not _ping(m1, o2["ip"])  # another network: the gateway does not route there
        capsys.readouterr()
        assert _cli(h1, "networks") == EXIT_OK
        rows = {n["name"]: n for n in the_lab.client(h1).request("GET", "/v1/networks")}
        assert rows["pub"]["driver"] == "macvlan"
        assert rows["pub"]["gateway"] == "10.230.0.1"
        assert rows["pub"]["ip_range"] == "10.230.0.64/26"
        assert f"mtu {rows['pub']['mtu']} " in _in(m1["netns"], "ip", "link", "show",
                                                    "eth0").stdout
        # the old per-endpoint mode maps onto the network; a different one is refused
        assert _cli(h1, "endpoint", "create", "wrong", "--network", "pub",
                    "--mode", "bridge") == EXIT_USAGE
        # deleting gives the address back to the shared IPAM: h2 may then take it
        assert _cli(h1, "endpoint", "delete", "m1") == EXIT_OK
        made.append((h2, "m1"))
        the_lab.wait_for(lambda: main(["endpoint", "create", "m1", "--network", "pub", "--ip",
                                       m1["ip"], "--socket", str(h2.socket)]) == EXIT_OK,
                         "h2 to get the released address", 15, interval=0.2)
    finally:
        _clean_up(the_lab, h1, made, ("pub", "other"))


def _clean_up(lab: Lab, host: LabHost, endpoints: list[tuple[LabHost, str]],
              networks: tuple[str, ...]) -> None:
    """Endpoints then networks gone (a network goes once its released addresses flushed)."""
    for owner, name in endpoints:
        main(["endpoint", "delete", name, "--socket", str(owner.socket)])
    for network in networks:
        argv = ["network", "delete", network, "--socket", str(host.socket)]
        lab.wait_for(lambda argv=argv: main(argv) in (EXIT_OK, EXIT_NOT_FOUND),  # type: ignore[misc]
                     f"network {network} deleted", 15, interval=0.2)


def test_macvlan_on_a_vlan_parent_makes_and_removes_the_sub_interface(
        lab: tuple[Lab, LabState], capsys: pytest.CaptureFixture[str]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    capsys.readouterr()
    code = _cli(h1, "network", "create", "v30", "--driver", "macvlan", "--subnet", VLAN32,
                "--parent", "eth0.30")
    if code == EXIT_USAGE:
        err = capsys.readouterr().err
        assert "parent='eth0.30'" in err and "8021q" in err, err
        assert not _link_exists(h1, "eth0.30")
        pytest.skip(f"this kernel has no 802.1Q VLANs: {err.strip()}")
    assert code == EXIT_OK
    made = [(h1, "v1"), (h2, "v2")]
    try:
        assert not _link_exists(h1, "eth0.30")
        for host, name in made:
            assert _cli(host, "endpoint", "create", name, "--network", "v30") == EXIT_OK
        assert _link_exists(h1, "eth0.30") and _link_exists(h2, "eth0.30")
        # both hosts' frames carry tag 30 over the switch (VLAN-unaware: it forwards them)
        assert _ping(_ep(the_lab, h1, "v1"), _ep(the_lab, h2, "v2")["ip"])
        assert _cli(h1, "endpoint", "delete", "v1") == EXIT_OK
        assert not _link_exists(h1, "eth0.30")  # the last endpoint on it took it along
        assert _link_exists(h2, "eth0.30")
    finally:
        _clean_up(the_lab, h1, made, ("v30",))


SERVE_ONE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(1); s.settimeout(20); print("listening", flush=True)
conn, peer = s.accept(); conn.sendall(b"hello from f1"); conn.close()
"""
FETCH = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(100).decode())
"""


def test_bridge_networks_nat_published_port_internal_and_isolation(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    networks = (("front", "172.30.1.0/24", ()), ("back", "172.30.2.0/24", ()),
                ("priv", "172.30.3.0/24", ("--internal",)))
    for name, subnet, extra in networks:
        assert _cli(h1, "network", "create", name, "--driver", "bridge", "--subnet", subnet,
                    *extra) == EXIT_OK
    made = [(h1, "f1"), (h1, "f2"), (h1, "b1"), (h1, "p1"), (h1, "p2")]
    try:
        assert _cli(h1, "endpoint", "create", "f1", "--network", "front",
                    "--publish", "8080:80/tcp") == EXIT_OK
        for name, network in (("f2", "front"), ("b1", "back"), ("p1", "priv"),
                              ("p2", "priv")):
            assert _cli(h1, "endpoint", "create", name, "--network", network) == EXIT_OK
        f1, f2, b1, p1, p2 = (_ep(the_lab, h1, n) for n in ("f1", "f2", "b1", "p1", "p2"))
        assert f1["mode"] == "bridge" and f1["ip"].startswith("172.30.1.")
        assert f1["bridge"] != b1["bridge"]  # one Linux bridge per network
        assert _ping(f1, f2["ip"]) and _ping(p1, p2["ip"])
        assert _ping(f1, "10.77.0.1")  # NAT egress to the underlay (the lab's switch)
        assert not _ping(p1, "10.77.0.1")  # internal: no way out
        assert not _ping(f1, b1["ip"]) and not _ping(b1, f1["ip"])  # bridge networks isolated
        assert not _ping(f1, p1["ip"])
        tables = _in(h1.netns, "nft", "list", "tables").stdout.split("\n")
        assert "table ip vxmesh" in tables, tables  # our one table
        # the published port answers from the other host
        server = subprocess.Popen(ip_netns_exec(f1["netns"], ["python3", "-c", SERVE_ONE]),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline() == "listening\n"
            fetched = _in(h2.netns, "python3", "-c", FETCH, h1.address, "8080")
            assert fetched.stdout.strip() == "hello from f1", fetched.stderr
        finally:
            server.kill()
            server.wait(10)
        bridge = f1["bridge"]
        for name in ("f1", "f2"):
            assert _cli(h1, "endpoint", "delete", name) == EXIT_OK
        assert not _link_exists(h1, bridge)  # the network's last endpoint took its bridge
    finally:
        _clean_up(the_lab, h1, made, tuple(n for n, _, _ in networks))


def test_ipv6_bridge_network_dual_stack_with_egress(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1 = state.hosts[0]
    for netns, address in ((state.switch, "fd17:77::1/64"), (h1.netns, "fd17:77::11/64")):
        device = "br0" if netns == state.switch else "eth0"
        subprocess.run(ip_netns_exec(netns, ["ip", "-6", "addr", "replace", address, "dev",
                                             device, "nodad"]), check=True, timeout=10)
    assert _cli(h1, "network", "create", "six", "--driver", "bridge", "--subnet",
                "172.30.4.0/24", "--subnet6", "fd17:4::/64") == EXIT_OK
    made = [(h1, "s1"), (h1, "s2")]
    try:
        assert _cli(h1, "endpoint", "create", "s1", "--network", "six") == EXIT_OK
        assert _cli(h1, "endpoint", "create", "s2", "--network", "six", "--ip6",
                    "fd17:4::99") == EXIT_OK
        s1, s2 = _ep(the_lab, h1, "s1"), _ep(the_lab, h1, "s2")
        assert s1["addresses"] == ["172.30.4.2/24", "fd17:4::2/64"]
        assert "fd17:4::99/64" in s2["addresses"]
        route = _in(s1["netns"], "ip", "-6", "route", "show", "default").stdout
        assert "via fd17:4::1" in route, route
        assert _ping(s1, "fd17:4::99")
        assert _ping(s1, "fd17:77::1")  # out through IPv6 NAT on the host
        assert "table ip6 vxmesh" in _in(h1.netns, "nft", "list", "tables").stdout
        assert _cli(h1, "endpoint", "create", "s3", "--network", "six", "--ip6",
                    "fd99::1") == EXIT_USAGE  # outside the IPv6 subnet: refused
    finally:
        _clean_up(the_lab, h1, made, ("six",))
    assert "table ip6 vxmesh" not in _in(h1.netns, "nft", "list", "tables").stdout


def test_overlay_egress_through_nat_on_the_own_host_internal_and_isolation(
        lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    networks = (("ova", "10.233.0.0/24", ()), ("ovb", "10.234.0.0/24", ()),
                ("ovi", "10.235.0.0/24", ("--internal",)))
    for name, subnet, extra in networks:
        assert _cli(h1, "network", "create", name, "--subnet", subnet, *extra) == EXIT_OK
    made = [(h1, "a1"), (h2, "a2"), (h1, "b1"), (h1, "i1"), (h2, "i2")]
    try:
        for host, name in made:
            network = {"a": "ova", "b": "ovb", "i": "ovi"}[name[0]]
            assert _cli(host, "endpoint", "create", name, "--network", network) == EXIT_OK
        a1, a2, b1, i1, i2 = (_ep(the_lab, host, name) for host, name in made)
        assert a1["mode"] == "overlay"
        the_lab.wait_for(lambda: _ping(a1, a2["ip"]), "a1 to reach a2 over the overlay", 15,
                         interval=0.2)
        the_lab.wait_for(lambda: _ping(i1, i2["ip"]), "i1 to reach i2", 15, interval=0.2)
        assert _ping(a1, "10.77.0.1")  # the underlay, through NAT on a1's own host
        assert not _ping(i1, "10.77.0.1")  # internal: no way out
        assert not _ping(a1, b1["ip"]) and not _ping(b1, a1["ip"])  # isolated on one host
        rules = _in(h1.netns, "nft", "list", "table", "ip", "vxmesh").stdout
        assert "10.233.0.0/24" in rules and "masquerade" in rules, rules
        assert "10.235.0.0/24" not in rules  # internal: never masqueraded
    finally:
        _clean_up(the_lab, h1, made, tuple(n for n, _, _ in networks))


def _underlay6(state: LabState, host: LabHost) -> None:
    """IPv6 on the underlay: the switch fd17:77::1, the host fd17:77::<11+n> (for egress)."""
    own = f"fd17:77::{host.address.rsplit('.', 1)[1]}/64"
    for netns, device, address in ((state.switch, "br0", "fd17:77::1/64"),
                                   (host.netns, "eth0", own)):
        subprocess.run(ip_netns_exec(netns, ["ip", "-6", "addr", "replace", address, "dev",
                                             device, "nodad"]), check=True, timeout=10)


def test_ipv6_overlay_across_hosts_egress_and_isolation(lab: tuple[Lab, LabState]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    _underlay6(state, h1)
    networks = (("blue6", "10.236.0.0/24", "fd17:36::/64"),
                ("red6", "10.237.0.0/24", "fd17:37::/64"))
    for name, subnet, subnet6 in networks:
        assert _cli(h1, "network", "create", name, "--driver", "overlay", "--subnet", subnet,
                    "--subnet6", subnet6) == EXIT_OK
    made = [(h1, "x1"), (h2, "x2"), (h2, "x3"), (h1, "r1")]
    try:
        assert _cli(h1, "endpoint", "create", "x1", "--network", "blue6") == EXIT_OK
        assert _cli(h2, "endpoint", "create", "x2", "--network", "blue6") == EXIT_OK
        assert _cli(h2, "endpoint", "create", "x3", "--network", "blue6", "--ip6",
                    "fd17:36::77") == EXIT_OK
        assert _cli(h1, "endpoint", "create", "r1", "--network", "red6") == EXIT_OK
        x1, x2, x3, r1 = (_ep(the_lab, host, name) for host, name in made)
        six = {name: next(a.split("/")[0] for a in ep["addresses"] if ":" in a)
               for name, ep in (("x1", x1), ("x2", x2), ("x3", x3), ("r1", r1))}
        # one IPAM for both hosts: never the same IPv6 address twice, each with its prefix
        assert len(set(six.values())) == 4, six
        assert six["x3"] == "fd17:36::77"
        assert f"{six['x1']}/64" in x1["addresses"] and x1["gateway6"] == "fd17:36::1"
        route = _in(x1["netns"], "ip", "-6", "route", "show", "default").stdout
        assert "via fd17:36::1" in route, route
        # both ways across the overlay, over static NDP entries from the gossip table
        the_lab.wait_for(lambda: _ping(x1, six["x2"]), "x1 to reach x2 over IPv6", 15,
                         interval=0.2)
        assert _ping(x2, six["x1"]) and _ping(x1, six["x3"])
        vni = {n["name"]: n["vni"] for n in the_lab.client(h2).request("GET", "/v1/networks")}
        vxtun = f"vxtun{vni['blue6']}"
        neighbors = _in(h2.netns, "ip", "-6", "neigh", "show", "dev", vxtun).stdout
        assert f"{six['x1']} lladdr {x1['mac']} PERMANENT" in neighbors, neighbors
        assert _ping(x1, "fd17:77::1")  # out through IPv6 NAT on x1's own host
        assert not _ping(x1, six["r1"]) and not _ping(r1, six["x1"])  # overlays isolated
        rules = _in(h1.netns, "nft", "list", "table", "ip6", "vxmesh").stdout
        assert "fd17:36::/64" in rules and "masquerade" in rules, rules
        assert _cli(h1, "endpoint", "create", "bad6", "--network", "blue6", "--ip6",
                    "fd17:99::5") == EXIT_USAGE  # outside the network's IPv6 subnet
        assert _cli(h2, "endpoint", "create", "dup6", "--network", "blue6", "--ip6",
                    six["x1"]) != EXIT_OK  # held by x1 on the other host
        assert _cli(h1, "network", "create", "clash6", "--subnet", "10.238.0.0/24",
                    "--subnet6", "fd17:36::/80") != EXIT_OK  # inside blue6's IPv6 subnet
    finally:
        _clean_up(the_lab, h1, made, tuple(n for n, _, _ in networks))


def test_old_modes_without_a_network_map_onto_default_networks(
        lab: tuple[Lab, LabState], capsys: pytest.CaptureFixture[str]) -> None:
    the_lab, state = lab
    h1, h2 = state.hosts
    made = [(h1, "db1"), (h1, "db2"), (h1, "dm1"), (h2, "dm2"), (h1, "dn"), (h1, "dh")]
    try:
        # bridge: Docker's default `bridge` network, made on first use on the built-in
        # bridge's subnet and kernel bridge, NAT egress
        assert _cli(h1, "endpoint", "create", "db1", "--mode", "bridge") == EXIT_OK
        assert _cli(h1, "endpoint", "create", "db2", "--mode", "bridge") == EXIT_OK
        db1, db2 = _ep(the_lab, h1, "db1"), _ep(the_lab, h1, "db2")
        assert db1["network"] == "bridge" and db1["bridge"] == "vxlocal0"
        assert db1["addresses"] == ["172.29.0.2/16"] and db2["addresses"] == ["172.29.0.3/16"]
        assert _ping(db1, db2["ip"]) and _ping(db1, "10.77.0.1")  # NAT out to the underlay
        # macvlan: the network `macvlan` on the underlay's LAN, with its prefix and gateway,
        # the address chosen (vxmesh does not know the LAN's free ones) and held in the
        # shared IPAM
        capsys.readouterr()
        assert _cli(h1, "endpoint", "create", "dm0", "--mode", "macvlan") == EXIT_USAGE
        assert "ip: required" in capsys.readouterr().err
        assert _cli(h1, "endpoint", "create", "dm1", "--mode", "macvlan", "--ip",
                    "10.77.0.201") == EXIT_OK
        assert _cli(h2, "endpoint", "create", "dm2", "--mode", "macvlan", "--ip",
                    "10.77.0.202") == EXIT_OK
        assert _cli(h2, "endpoint", "create", "dm3", "--mode", "macvlan", "--ip",
                    "10.77.0.201") != EXIT_OK  # h1's dm1 holds it
        dm1, dm2 = _ep(the_lab, h1, "dm1"), _ep(the_lab, h2, "dm2")
        assert dm1["network"] == "macvlan" and dm1["addresses"] == ["10.77.0.201/24"]
        assert "via 10.77.0.1" in _in(dm1["netns"], "ip", "route", "show", "default").stdout
        assert _ping(dm1, dm2["ip"]) and _ping(dm1, "10.77.0.1")
        # none and host stay endpoint-only
        assert _cli(h1, "endpoint", "create", "dn", "--mode", "none") == EXIT_OK
        assert _cli(h1, "endpoint", "create", "dh", "--mode", "host") == EXIT_OK
        assert _ep(the_lab, h1, "dn")["network"] == "" and _ep(the_lab, h1, "dh")["netns"] is None
        rows = {n["name"]: n for n in the_lab.client(h2).request("GET", "/v1/networks")}
        assert rows["bridge"]["driver"] == "bridge" and rows["bridge"]["subnet"] == "172.29.0.0/16"
        assert rows["macvlan"]["driver"] == "macvlan" and rows["macvlan"]["parent"] == "eth0"
        assert rows["macvlan"]["subnet"] == "10.77.0.0/24"
        assert not {"none", "host"} & rows.keys()
    finally:
        _clean_up(the_lab, h1, made, ("bridge", "macvlan"))


def test_overlay_isolation_and_egress_hold_across_an_agent_restart(
        lab: tuple[Lab, LabState]) -> None:
    """The isolation rules are replaced atomically and never removed: a stream of probes from
    one overlay network to another on the same host keeps failing while the agent stops and
    starts again (and the network's own traffic keeps flowing)."""
    the_lab, state = lab
    h1, h2 = state.hosts
    networks = (("iso1", "10.239.1.0/24"), ("iso2", "10.239.2.0/24"))
    for name, subnet in networks:
        assert _cli(h1, "network", "create", name, "--subnet", subnet) == EXIT_OK
    made = [(h1, "k1"), (h2, "k2"), (h1, "l1")]
    try:
        for host, name in made:
            network = "iso1" if name.startswith("k") else "iso2"
            assert _cli(host, "endpoint", "create", name, "--network", network) == EXIT_OK
        k1, k2, l1 = (_ep(the_lab, host, name) for host, name in made)
        the_lab.wait_for(lambda: _ping(k1, k2["ip"]), "k1 to reach k2", 15, interval=0.2)
        assert not _ping(k1, l1["ip"])
        crossing = ProbeStream(k1["netns"], l1["ip"], rate=200)  # must never be answered
        control = ProbeStream(k1["netns"], k2["ip"], rate=100)  # its own network: answered
        try:
            control.wait_answering()
            assert the_lab.stop_agent(state, h1) == 0
            the_lab.start_agent(state, h1)
            the_lab.wait_agent_ready(h1, 30)
            assert _cli(h1, "endpoint", "create", "l2", "--network", "iso2") == EXIT_OK
            made.append((h1, "l2"))  # after start-up: the rules as the running agent has them
        finally:
            crossed, kept = crossing.stop(), control.stop()
        assert crossed.sent > 200 and crossed.answered == 0, crossed
        assert kept.lost == 0, kept
        rules = _in(h1.netns, "nft", "list", "table", "ip", "vxmesh").stdout
        assert rules.count(" drop") >= 2, rules  # the isolation rules are back in place
    finally:
        _clean_up(the_lab, h1, made, tuple(n for n, _ in networks))
