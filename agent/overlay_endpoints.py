"""Kernel side of an overlay endpoint on this host: its namespace and its veth.

Owns: naming (namespace `vx-<node>-<endpoint>`, host-side veth `vxh<8 hex>`, derived from node
and endpoint names so a restarted agent finds them again) and the create/delete recipe: a
named namespace, a veth whose peer is born inside it as `eth0`, then the peer's MAC, MTU and
address, up. The host side is plugged into the network's bridge by the reconciler (it is part
of desired state), so the bridge and the port never race.

Rules:
- create is idempotent (an existing namespace, veth or address is adopted); delete removes
  the namespace (its veth goes with it) and treats "already gone" as success.
- Inside the endpoint namespace we run iproute2 (`ip -n NS ...`, fork + exec) instead of
  opening pyroute2 there: pyroute2 enters a namespace by forking a Python child, which can
  hang in a process whose other threads (gRPC's) hold locks at the fork.
- The veth itself is created from our own namespace through the kernel adapter.

May import: underlay (links, kernel), agent.errors, trio, the standard library.
"""

from __future__ import annotations

import ipaddress
import zlib

import trio

from agent.errors import AgentError
from agent.local_endpoints import EndpointRecord
from underlay import links
from underlay.kernel import NetlinkThread


class PlumbingError(AgentError):
    """An endpoint's namespace or interface could not be set up; the message says which step."""


def endpoint_mac(ip: str) -> str:
    """A MAC derived from the address, as Docker does (02:42 + IPv4 octets; IPv6: its tail)."""
    packed = ipaddress.ip_address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed[-4:])


async def _ip(*argv: str, ok_if: tuple[str, ...] = ()) -> None:
    result = await trio.run_process(["ip", *argv], capture_stdout=True, capture_stderr=True,
                                    check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        if any(text in message for text in ok_if):
            return
        raise PlumbingError(f"`ip {' '.join(argv)}` failed: {message}")


class OverlayPlumbing:
    """Creates and deletes overlay endpoints' namespaces and veths."""

    def __init__(self, nl: NetlinkThread) -> None:
        self.nl = nl

    @staticmethod
    def netns_name(node: str, endpoint: str) -> str:
        return f"vx-{node}-{endpoint}"

    @staticmethod
    def host_ifname(node: str, endpoint: str) -> str:
        return f"vxh{zlib.crc32(f'{node}/{endpoint}'.encode()):08x}"

    async def create(self, record: EndpointRecord, *, mtu: int) -> None:
        assert record.netns and record.host_ifname and record.ip and record.mac
        netns, host_ifname, mac = record.netns, record.host_ifname, record.mac
        await _ip("netns", "add", netns, ok_if=("File exists",))
        await _ip("-n", netns, "link", "set", "lo", "up")
        await self.nl.call(lambda ipr: links.ensure_veth(
            ipr, host_ifname, "eth0", peer_netns=netns, mtu=mtu, peer_mac=mac, up=True))
        await _ip("-n", netns, "link", "set", "eth0", "address", mac, "mtu", str(mtu), "up")
        await _ip("-n", netns, "addr", "replace", f"{record.ip}/{record.prefixlen}",
                  "dev", "eth0", *(["nodad"] if ":" in record.ip else []))

    async def delete(self, record: EndpointRecord) -> None:
        host_ifname, netns = record.host_ifname, record.netns
        if netns:
            await _ip("netns", "del", netns, ok_if=("No such file", "Invalid argument"))
        if host_ifname:
            await self.nl.call(lambda ipr: links.delete_link(ipr, host_ifname))



