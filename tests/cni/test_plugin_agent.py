"""The `vxmesh` CNI plugin against a real agent, in the style of containernetworking/plugins'
testutils: the plugin runs as a process in the host's namespace (lab host h1) with `CNI_*`
variables and stdin, for a container namespace the test makes, over every spec version.
ADD/CHECK/DEL/GC/STATUS; chaining with Debian's reference `portmap`, `bandwidth`, `firewall`
and `tuning` consuming `prevResult`; the error codes only the agent can give; bad requests
leave nothing behind; a DEL while the agent is down is worked off when it starts.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Any

import dns.message
import pytest

from agent.api.client import CliError
from agent.cni import spec
from agent.cni.invoke import ALL_VERSIONS, Attachment, PluginRun, chain, run_plugin
from agent.cni.launcher import PLUGIN_NAME, build_front
from agent.cni.netconf import attachment_name
from agent.lab.namespaces import NetnsLab, run
from tests.cni.conftest import NETWORK, SUBNET, CniLab
from underlay.netns_sockets import open_socket_in_netns

pytestmark = [pytest.mark.kernel, pytest.mark.etcd]

GATEWAY = str(next(ipaddress.ip_network(SUBNET).hosts()))


def conf(cl: CniLab, version: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": NETWORK, "type": "vxmesh", "network": NETWORK,
            "socket": str(cl.h1.socket), **extra}


def plugin(cl: CniLab, command: str, config: dict[str, Any] | bytes,
           attachment: Attachment | None = None, **env: str) -> PluginRun:
    return run_plugin(cl.bin_dir, "vxmesh", command, config, attachment=attachment,
                      host_netns=cl.h1.netns, env=env or None)


def container(netns_lab: NetnsLab, tag: str, ifname: str = "eth0") -> Attachment:
    name = netns_lab.ns(tag)
    return Attachment(container_id=f"id-{name}", netns=f"/run/netns/{name}", ifname=ifname)


def ns_name(attachment: Attachment) -> str:
    return Path(attachment.netns).name


def cni_attachments(cl: CniLab) -> set[str]:
    endpoints = cl.lab.client(cl.h1).request("GET", "/v1/endpoints")
    return {e["name"] for e in endpoints if e.get("local") and str(e["name"]).startswith("cni-")}


def host_veths(cl: CniLab) -> set[str]:
    out = run(["ip", "-o", "link", "show"], netns=cl.h1.netns).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.split(":")[1].strip().startswith("vxep")}


def inside(attachment: Attachment, *argv: str) -> str:
    return run(list(argv), netns=ns_name(attachment)).stdout


def resolve(attachment: Attachment, name: str) -> list[str]:
    """What 127.0.0.11 inside the container's namespace answers for `name`."""
    query = dns.message.make_query(name, "A")
    sock = open_socket_in_netns(attachment.netns, socket.AF_INET, socket.SOCK_DGRAM,
                                bind=("127.0.0.1", 0))
    with sock:
        sock.settimeout(2.0)
        sock.sendto(query.to_wire(), ("127.0.0.11", 53))
        reply = dns.message.from_wire(sock.recv(65535))
    return [r.to_text() for rrset in reply.answer for r in rrset]


def assert_nothing_left(cl: CniLab, before_veths: set[str]) -> None:
    assert cni_attachments(cl) == set()
    assert host_veths(cl) == before_veths


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_check_del_in_every_version(cni_lab: CniLab, netns_lab: NetnsLab,
                                        version: str) -> None:
    veths = host_veths(cni_lab)
    attachment = container(netns_lab, "c")
    added = plugin(cni_lab, "ADD", conf(cni_lab, version), attachment)
    assert added.code == 0, added
    result = added.value
    assert result["cniVersion"] == version
    host_if, container_if = result["interfaces"]
    assert "sandbox" not in host_if and host_if["name"].startswith("vxep")
    assert container_if["name"] == "eth0" and container_if["sandbox"] == attachment.netns
    assert ("mtu" in container_if) == (version == "1.1.0")
    (ip,) = result["ips"]
    assert ip["interface"] == 1 and ip["gateway"] == GATEWAY
    assert ipaddress.ip_interface(ip["address"]).network == ipaddress.ip_network(SUBNET)
    assert ("version" in ip) == (spec.version_key(version) < (1, 0, 0))
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    # The kernel holds what the result says.
    shown = json.loads(inside(attachment, "ip", "-j", "addr", "show", "eth0"))[0]
    assert shown["address"] == container_if["mac"] and shown["mtu"] == 1450
    assert f"{ip['address']}" in {f"{a['local']}/{a['prefixlen']}" for a in shown["addr_info"]}
    assert f"default via {GATEWAY}" in inside(attachment, "ip", "route")
    assert run(["ping", "-c", "1", "-W", "2", GATEWAY], netns=ns_name(attachment)).returncode == 0
    assert host_if["name"] in host_veths(cni_lab)
    name = attachment_name(attachment.container_id, "eth0")
    # names: the agent's resolver answers inside the container's namespace, and says so
    assert result["dns"] == {"nameservers": ["127.0.0.11"], "search": [NETWORK]}
    assert resolve(attachment, name) == [str(ipaddress.ip_interface(ip["address"]).ip)]
    assert cni_attachments(cni_lab) == {name}
    if spec.version_key(version) >= (0, 4, 0):
        checked = plugin(cni_lab, "CHECK", conf(cni_lab, version, prevResult=result), attachment)
        assert checked.code == 0 and checked.stdout == "", checked
    for _ in range(2):  # DEL is idempotent
        deleted = plugin(cni_lab, "DEL", conf(cni_lab, version, prevResult=result), attachment)
        assert deleted.code == 0 and deleted.stdout == "", deleted
    assert_nothing_left(cni_lab, veths)
    assert "eth0" not in inside(attachment, "ip", "-o", "link")
    run(["ip", "netns", "delete", ns_name(attachment)])  # the runtime removes the namespace
    gone = plugin(cni_lab, "DEL", conf(cni_lab, version), attachment)
    assert gone.code == 0, gone


def test_del_after_the_namespace_is_gone(cni_lab: CniLab, netns_lab: NetnsLab) -> None:
    veths = host_veths(cni_lab)
    attachment = container(netns_lab, "g")
    assert plugin(cni_lab, "ADD", conf(cni_lab, "1.1.0"), attachment).code == 0
    run(["ip", "netns", "delete", ns_name(attachment)])
    deleted = plugin(cni_lab, "DEL", conf(cni_lab, "1.1.0"), attachment)
    assert deleted.code == 0, deleted
    assert_nothing_left(cni_lab, veths)


def test_the_compiled_front_hands_every_run_to_the_agent(cni_lab: CniLab, netns_lab: NetnsLab,
                                                         tmp_path: Path) -> None:
    """With the agent up, the front (agent/cni/front.c) never starts Python: built with an
    interpreter that does not exist, ADD, CHECK, STATUS, GC and DEL still answer as the Python
    plugin does (the agent runs it); only what needs Python (VERSION) meets the missing one."""
    if not build_front(tmp_path / PLUGIN_NAME, python="/nonexistent/python3"):
        pytest.skip("no C compiler (cc)")
    veths = host_veths(cni_lab)
    attachment = container(netns_lab, "f")

    def front(command: str, config: dict[str, Any], **env: str) -> PluginRun:
        return run_plugin(tmp_path, PLUGIN_NAME, command, config, attachment=attachment,
                          host_netns=cni_lab.h1.netns, env=env or None)

    added = front("ADD", conf(cni_lab, "1.1.0"))
    assert added.code == 0, added
    result = added.value
    assert result["cniVersion"] == "1.1.0" and result["interfaces"][1]["sandbox"] == \
        attachment.netns
    assert cni_attachments(cni_lab) == {attachment_name(attachment.container_id, "eth0")}
    assert front("CHECK", conf(cni_lab, "1.1.0", prevResult=result)).code == 0
    assert front("STATUS", conf(cni_lab, "1.1.0")).code == 0
    # an error answers in the configuration's version, from the agent's plugin run
    refused = front("ADD", conf(cni_lab, "1.0.0", network="no-such"))
    assert refused.error()["code"] == spec.NETWORK_UNKNOWN and \
        refused.value["cniVersion"] == "1.0.0"
    assert front("GC", {**conf(cni_lab, "1.1.0"), "cni.dev/valid-attachments": [
        {"containerID": attachment.container_id, "ifname": "eth0"}]}).code == 0
    assert front("DEL", conf(cni_lab, "1.1.0")).code == 0
    assert_nothing_left(cni_lab, veths)
    version = front("VERSION", conf(cni_lab, "1.1.0"))
    assert version.code == 1 and "/nonexistent/python3" in version.stdout


def test_check_reports_drift(cni_lab: CniLab, netns_lab: NetnsLab) -> None:
    attachment = container(netns_lab, "d")
    result = plugin(cni_lab, "ADD", conf(cni_lab, "1.0.0"), attachment).value
    address = result["ips"][0]["address"]
    try:
        wrong_mac = json.loads(json.dumps(result))
        wrong_mac["interfaces"][1]["mac"] = "02:00:00:00:00:99"
        error = plugin(cni_lab, "CHECK", conf(cni_lab, "1.0.0", prevResult=wrong_mac),
                       attachment).error()
        assert error["code"] == spec.DRIFT and "02:00:00:00:00:99" in error["details"]
        run(["ip", "addr", "flush", "dev", "eth0"], netns=ns_name(attachment))
        error = plugin(cni_lab, "CHECK", conf(cni_lab, "1.0.0", prevResult=result),
                       attachment).error()
        assert error["code"] == spec.DRIFT and address in error["details"], error
        run(["ip", "link", "set", "eth0", "down"], netns=ns_name(attachment))
        error = plugin(cni_lab, "CHECK", conf(cni_lab, "1.0.0", prevResult=result),
                       attachment).error()
        assert "down" in error["details"], error
        other = container(netns_lab, "o")
        error = plugin(cni_lab, "CHECK", conf(cni_lab, "1.0.0", prevResult=result),
                       other).error()
        assert error["code"] == spec.DRIFT
    finally:
        assert plugin(cni_lab, "DEL", conf(cni_lab, "1.0.0"), attachment).code == 0


def test_chained_reference_plugins_consume_the_result(cni_lab: CniLab,
                                                      netns_lab: NetnsLab) -> None:
    """portmap, bandwidth, firewall and tuning after vxmesh, as libcni runs a conflist."""
    veths = host_veths(cni_lab)
    conflist = {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
        {"type": "vxmesh", "network": NETWORK, "socket": str(cni_lab.h1.socket),
         "capabilities": {"ips": True, "mac": True}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {"type": "firewall", "backend": "iptables"},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    attachment = container(netns_lab, "p")
    attachment.capability_args = {
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                      "egressRate": 100_000_000, "egressBurst": 1_000_000}}
    last, result = chain(cni_lab.bin_dir, conflist, "ADD", attachment, version="1.0.0",
                         host_netns=cni_lab.h1.netns)
    try:
        assert last.code == 0, last
        address = result["ips"][0]["address"].split("/")[0]
        host_if = result["interfaces"][0]["name"]
        assert inside(attachment, "cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects"
                      ).strip() == "0"
        assert "tbf" in run(["tc", "qdisc", "show", "dev", host_if], netns=cni_lab.h1.netns
                            ).stdout
        rules = run(["iptables-save"], netns=cni_lab.h1.netns).stdout
        assert "CNI-FORWARD" in rules and address in rules
        assert "--dport 18080" in rules and f"{address}:80" in rules
        # Debian's portmap 1.1.1 fails CHECK on an IPv4-only attachment looking for IPv6
        # rules it never made (containernetworking/plugins#819): the rest of the chain checks.
        without_portmap = {**conflist, "plugins": conflist["plugins"][:-1]}
        checked, _ = chain(cni_lab.bin_dir, without_portmap, "CHECK", attachment,
                           version="1.0.0", host_netns=cni_lab.h1.netns, prev=result)
        assert checked.code == 0, checked
    finally:
        deleted, _ = chain(cni_lab.bin_dir, conflist, "DEL", attachment, version="1.0.0",
                           host_netns=cni_lab.h1.netns, prev=result)
    assert deleted.code == 0, deleted
    assert "--dport 18080" not in run(["iptables-save"], netns=cni_lab.h1.netns).stdout
    assert_nothing_left(cni_lab, veths)


def test_gc_removes_what_is_not_valid(cni_lab: CniLab, netns_lab: NetnsLab) -> None:
    veths = host_veths(cni_lab)
    keep, drop = container(netns_lab, "k"), container(netns_lab, "x")
    for attachment in (keep, drop):
        assert plugin(cni_lab, "ADD", conf(cni_lab, "1.1.0"), attachment).code == 0
    valid = [{"containerID": keep.container_id, "ifname": "eth0"}]
    collected = plugin(cni_lab, "GC", conf(cni_lab, "1.1.0",
                                           **{"cni.dev/valid-attachments": valid}))
    assert collected.code == 0 and collected.stdout == "", collected
    assert cni_attachments(cni_lab) == {attachment_name(keep.container_id, "eth0")}
    assert "eth0" not in inside(drop, "ip", "-o", "link")
    assert plugin(cni_lab, "DEL", conf(cni_lab, "1.1.0"), keep).code == 0
    assert_nothing_left(cni_lab, veths)


def test_status_ready_then_50_without_etcd(cni_lab: CniLab) -> None:
    ready = plugin(cni_lab, "STATUS", conf(cni_lab, "1.1.0"))
    assert ready.code == 0 and ready.stdout == "", ready
    cni_lab.lab.stop_etcd(cni_lab.state)
    try:
        def degraded() -> bool:
            return bool(cni_lab.lab.client(cni_lab.h1).request("GET", "/v1/status")["degraded"])

        cni_lab.lab.wait_for(degraded, "h1 to notice etcd is gone", 30.0)
        error = plugin(cni_lab, "STATUS", conf(cni_lab, "1.1.0")).error()
        assert error["code"] == spec.NOT_AVAILABLE and "etcd" in error["details"]
    finally:
        cni_lab.lab.start_etcd(cni_lab.state)
        cni_lab.lab.wait_for(lambda: not cni_lab.lab.client(cni_lab.h1).request(
            "GET", "/v1/status")["degraded"], "h1 to reach etcd again", 30.0)


def test_agent_refusals_have_their_codes_and_leave_nothing(cni_lab: CniLab,
                                                           netns_lab: NetnsLab) -> None:
    veths = host_veths(cni_lab)
    attachment = container(netns_lab, "r")
    run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "taken0"],
        netns=ns_name(attachment))
    links_before = inside(attachment, "ip", "-o", "link")
    cases = [
        (conf(cni_lab, "1.0.0", network="nowhere"), spec.NETWORK_UNKNOWN, "nowhere"),
        (conf(cni_lab, "1.0.0", runtimeConfig={"ips": ["10.99.0.5/16"]}), spec.INVALID_CONFIG,
         "10.99.0.5"),
        (conf(cni_lab, "1.0.0", runtimeConfig={"ips": [f"{GATEWAY}/16"]}), spec.INVALID_CONFIG,
         GATEWAY),
        (conf(cni_lab, "1.0.0", subnet="10.213.128.0/17", network="overlaps"), spec.CONFLICT,
         "10.213.128.0/17"),
        (conf(cni_lab, "1.0.0"), spec.CONFLICT, "eth0"),  # the interface name is taken
    ]
    for config, code, named in cases:
        error = plugin(cni_lab, "ADD", config, attachment).error()
        assert error["code"] == code and named in error["details"], (config, error)
        assert_nothing_left(cni_lab, veths)
    assert inside(attachment, "ip", "-o", "link") == links_before


def test_a_network_is_created_from_the_configured_subnet(cni_lab: CniLab,
                                                         netns_lab: NetnsLab) -> None:
    attachment = container(netns_lab, "n")
    config = conf(cni_lab, "1.0.0", network="green", subnet="10.214.0.0/24")
    added = plugin(cni_lab, "ADD", config, attachment)
    try:
        assert added.code == 0, added
        assert added.value["ips"][0]["address"].startswith("10.214.0.")
        # h2 learns the network from etcd's watch: a moment after h1 made it
        cni_lab.lab.wait_for(lambda: {n["name"]: n["subnet"] for n in cni_lab.lab.client(
            cni_lab.h2).request("GET", "/v1/networks")}.get("green") == "10.214.0.0/24",
            "network green with its subnet on h2", 15.0)
    finally:
        assert plugin(cni_lab, "DEL", config, attachment).code == 0

        def deleted() -> bool:  # once the pool has flushed the released address to etcd
            cni_lab.lab.client(cni_lab.h1).request("DELETE", "/v1/networks/green")
            return True

        cni_lab.lab.wait_for(deleted, "network green to be deletable", 20.0, interval=0.2)


def test_dual_stack_network_result_carries_the_ipv6_address(cni_lab: CniLab,
                                                             netns_lab: NetnsLab) -> None:
    client = cni_lab.lab.client(cni_lab.h1)
    client.request("POST", "/v1/networks", {"name": "dual", "subnet": "10.215.0.0/24",
                                            "subnet6": "fd17:215::/64"})
    attachment = container(netns_lab, "d")
    config = conf(cni_lab, "1.1.0", network="dual")
    added = plugin(cni_lab, "ADD", config, attachment)
    try:
        assert added.code == 0, added
        ip4, ip6 = added.value["ips"]
        assert ip4["gateway"] == "10.215.0.1" and ip6["gateway"] == "fd17:215::1"
        assert ipaddress.ip_interface(ip6["address"]).network == \
            ipaddress.ip_network("fd17:215::/64")
        assert {"dst": "::/0", "gw": "fd17:215::1"} in added.value["routes"]
        assert ip6["address"] in inside(attachment, "ip", "-6", "addr", "show", "eth0")
        assert "default via fd17:215::1" in inside(attachment, "ip", "-6", "route")
        checked = plugin(cni_lab, "CHECK", conf(cni_lab, "1.1.0", network="dual",
                                                prevResult=added.value), attachment)
        assert checked.code == 0, checked
    finally:
        assert plugin(cni_lab, "DEL", config, attachment).code == 0

        def deleted() -> bool:  # once the pools have flushed the released addresses
            client.request("DELETE", "/v1/networks/dual")
            return True

        cni_lab.lab.wait_for(deleted, "network dual to be deletable", 20.0, interval=0.2)


def test_del_while_the_agent_is_down_is_done_when_it_starts(cni_lab: CniLab,
                                                            netns_lab: NetnsLab) -> None:
    veths = host_veths(cni_lab)
    attachment = container(netns_lab, "s")
    assert plugin(cni_lab, "ADD", conf(cni_lab, "1.1.0"), attachment).code == 0
    cni_lab.lab.stop_agent(cni_lab.state, cni_lab.h1, kill=True)
    try:
        deleted = plugin(cni_lab, "DEL", conf(cni_lab, "1.1.0"), attachment)
        assert deleted.code == 0 and "next start" in deleted.stderr, deleted
        error = plugin(cni_lab, "STATUS", conf(cni_lab, "1.1.0")).error()
        assert error["code"] == spec.NOT_AVAILABLE_LIMITED
    finally:
        cni_lab.lab.start_agent(cni_lab.state, cni_lab.h1)
        cni_lab.lab.wait_converged(cni_lab.state, timeout=60)
    assert_nothing_left(cni_lab, veths)
    assert not list((cni_lab.h1.socket.parent / "cni-detach").glob("*.json"))


def test_an_address_another_host_recorded_meanwhile_is_replaced_before_the_reply(
        cni_lab: CniLab, netns_lab: NetnsLab) -> None:
    """h1 takes an address from its block locally and has etcd confirm it while it makes the
    veth (the round trip overlaps the kernel work). When h2 recorded that very address (a
    chosen one) in h1's block first, h1 answers the address etcd confirmed instead, and the
    container's interface carries what the answer says: never one address twice."""
    version = "1.0.0"
    first, second = container(netns_lab, "r1"), container(netns_lab, "r2")
    added = plugin(cni_lab, "ADD", conf(cni_lab, version), first)
    assert added.code == 0, added
    base = ipaddress.ip_interface(added.value["ips"][0]["address"]).ip
    h2 = cni_lab.lab.client(cni_lab.h2)
    recorded = None
    try:
        for step in range(1, 6):  # the lowest free address after `base` is h1's next one
            try:
                h2.request("POST", "/v1/endpoints", {"name": "chosen", "network": NETWORK,
                                                     "ip": str(base + step)})
            except CliError as exc:
                assert "HTTP 409" in str(exc), exc  # taken already: h1 skips it too
                continue
            recorded = base + step
            break
        assert recorded is not None
        again = plugin(cni_lab, "ADD", conf(cni_lab, version), second)
        assert again.code == 0, again
        (ip,) = again.value["ips"]
        got = ipaddress.ip_interface(ip["address"]).ip
        assert got != recorded and got != base
        assert f"address {recorded} was recorded by another host meanwhile; it got {got}" \
            in cni_lab.h1.log_path.read_text(errors="replace")
        shown = json.loads(inside(second, "ip", "-j", "addr", "show", "eth0"))[0]
        assert {a["local"] for a in shown["addr_info"] if a["family"] == "inet"} == {str(got)}
        assert shown["address"] == again.value["interfaces"][1]["mac"]
        assert run(["ping", "-c", "1", "-W", "2", GATEWAY], netns=ns_name(second)).returncode == 0
    finally:
        for attachment in (first, second):
            plugin(cni_lab, "DEL", conf(cni_lab, version), attachment)
        if recorded is not None:
            h2.request("DELETE", "/v1/endpoints/chosen")
