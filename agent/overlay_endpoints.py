"""Kernel side of an overlay endpoint on this host: its namespace and its veth.

Owns: naming (namespace `vx-<node>-<endpoint>`, host-side veth `vxh<8 hex>`, derived from node
and endpoint names so a restarted agent finds them again) and the create/delete recipe: a
named namespace, a veth whose peer is born inside it as `eth0` with the endpoint's MAC,
address and MTU, up. The host side is plugged into the network's bridge by the reconciler
(it is part of desired state), so the bridge and the port never race.

Rules: create is idempotent (an existing namespace or veth is adopted); delete removes the
namespace (its veth goes with it) and treats "already gone" as success.

May import: underlay (links, kernel), the standard library.
"""

from __future__ import annotations

import ipaddress
import zlib
from typing import Any

from agent.local_endpoints import EndpointRecord
from underlay import links
from underlay.kernel import NetlinkThread


def endpoint_mac(ip: str) -> str:
    """A MAC derived from the address, as Docker does (02:42 + IPv4 octets; IPv6: its tail)."""
    packed = ipaddress.ip_address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed[-4:])


class OverlayPlumbing:
    """Creates and deletes overlay endpoints' namespaces and veths through netlink."""

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
        netns, host_ifname = record.netns, record.host_ifname
        cidr = f"{record.ip}/{record.prefixlen}"
        mac = record.mac
        await self.nl.call(lambda ipr: links.create_netns(netns))
        await self.nl.call(lambda ipr: links.ensure_veth(
            ipr, host_ifname, "eth0", peer_netns=netns, mtu=mtu, peer_mac=mac, up=True))
        inside = NetlinkThread(netns)
        try:
            await inside.call(lambda ipr: self._configure_inside(ipr, cidr, mtu, mac))
        finally:
            inside.close()

    @staticmethod
    def _configure_inside(ipr: Any, cidr: str, mtu: int, mac: str) -> None:
        links.set_link(ipr, "eth0", mtu=mtu, mac=mac, up=True)
        links.add_address(ipr, "eth0", cidr)

    async def delete(self, record: EndpointRecord) -> None:
        host_ifname, netns = record.host_ifname, record.netns
        if netns:
            await self.nl.call(lambda ipr: links.delete_netns(netns))
        if host_ifname:
            await self.nl.call(lambda ipr: links.delete_link(ipr, host_ifname))
