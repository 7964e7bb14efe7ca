"""Attach a sandbox to a network, and detach it: the one operation behind every front door.

Owns: `Attachments`, which turns an `agent.api.attach.AttachRequest` into an endpoint on this
host and the records that make it reachable: for an overlay network the address (chosen, or
the next free one of this host's block, confirmed in etcd while it answers), joining the
network in the neighbor table (and a bulk sync with peers in it), waiting for the network's
bridge, the veth into the sandbox with the network's MTU and the Docker-style MAC, then at
once the table entry and its gossip (peers program their kernels while the rest is done), its
NAT egress and its resolver. For a macvlan/ipvlan network (the network's driver decides the
mode; a request's explicit mode must agree) the address from the same IPAM, the subnet's
prefix, the network's gateway as default route, on the network's parent. `detach` undoes it
in reverse. For a bridge network: its own Linux bridge on this host (NAT egress unless
internal, published ports, isolated from other bridge networks: `underlay.nat_table`), the
address the lowest free one on this host. bridge/macvlan/ipvlan without a network map onto
a default network named after the mode (`DEFAULT_NETWORKS`, made on first use). The
endpoint-only modes (host, none) only make the endpoint. Also the republish
of our overlay endpoints into the table at start, before gossip joins.

Rules:
- One attach or detach at a time on this host (a lock): names and addresses stay unique.
- A failed attach changes nothing: its address goes back to the pool.
- Errors are domain errors (store, endpoint model, underlay, `agent.api.errors`); the front
  doors map them through `agent.api.errors`, none is translated here.

May import: agent.api (attach types, errors), agent.store, agent.runtime, overlay, underlay,
trio, the standard library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import time

import trio

from agent.api.attach import (
    Attachment,
    AttachRequest,
    ExistingNetns,
    HandBackVeth,
    Route,
)
from agent.api.errors import Conflict, InvalidRequest, NotFound, Unavailable
from agent.errors import AgentError
from agent.runtime.gossip_link import GossipLink
from agent.runtime.names import EndpointNames, attributes_of
from agent.runtime.networks import KnownNetworks
from agent.runtime.pipeline import Pipeline
from agent.runtime.pools import AddressPool, AddressPools
from agent.store.errors import NetworkConflict, StoreUnavailable
from agent.store.schema import IPAddress, Network, validate_network
from agent.store.service import Store
from overlay import desired as desired_state
from overlay.attributes import InvalidAttributes, make_attributes
from overlay.table import NeighborTable
from underlay import links
from underlay.endpoints import Endpoints
from underlay.endpoints_model import (
    BridgeNetwork,
    EndpointNotFound,
    EndpointRecord,
    EndpointSpec,
    Mode,
    bridge_ifname,
)
from underlay.facts import UnderlayFacts
from underlay.kernel import NetlinkThread
from underlay.nat_table import OverlayEgress
from underlay.netns_exec import netns_path

log = logging.getLogger("vxmesh.agent")

BRIDGE_TIMEOUT = 10.0
NETWORK_SYNC_TIMEOUT = 2.0
NETWORK_WAIT = 5.0


def first_ip(record: EndpointRecord) -> str | None:
    """The endpoint's first address without its prefix length."""
    return record.addresses[0].split("/")[0] if record.addresses else None


def record_ips(record: EndpointRecord) -> tuple[str, ...]:
    """Every address of the endpoint without its prefix length (IPv4 first, then IPv6)."""
    return tuple(a.split("/")[0] for a in record.addresses)


def gateway6_of(record: EndpointRecord) -> str | None:
    """The endpoint's IPv6 default gateway (overlay: its spec's; bridge: its network's)."""
    if record.spec.gateway6 is not None:
        return record.spec.gateway6
    net = record.spec.bridge_network
    gateway6 = None if net is None or record.mode is not Mode.BRIDGE else net.gateway6
    return None if gateway6 is None else str(gateway6.ip)


def attachment_of(record: EndpointRecord, node: str) -> Attachment:
    """The attachment an endpoint record stands for."""
    spec = record.spec
    sandbox = netns_path(record.netns) if record.netns else record.sandbox
    default = "::/0" if record.gateway and ":" in record.gateway else "0.0.0.0/0"
    routes: tuple[Route, ...] = (Route(default, record.gateway),) if record.gateway else ()
    gateway6 = gateway6_of(record)
    if gateway6 is not None:
        routes += (Route("::/0", gateway6),)
    return Attachment(
        name=record.name, network=record.network or "", mode=record.mode, node=node,
        ip=first_ip(record), addresses=record.addresses, mac=record.mac, mtu=spec.mtu,
        gateway=record.gateway, gateway6=gateway6, routes=routes, netns=record.netns,
        sandbox=sandbox,
        ifname=record.ifname, host_ifname=record.host_ifname, handed_back=record.handed_back,
        bridge=record.bridge, state=record.state.value, publish=spec.publish,
        ports=spec.claims, aliases=spec.aliases, labels=spec.labels, services=spec.services)


class Attachments:
    """Attach and detach sandboxes on this host."""

    def __init__(self, *, node: str, facts: UnderlayFacts, netlink: NetlinkThread,
                 endpoints: Endpoints, table: NeighborTable, gossip: GossipLink,
                 pipeline: Pipeline, networks: KnownNetworks, pools: AddressPools,
                 store: Store, names: EndpointNames) -> None:
        self.node = node
        self._facts = facts
        self._netlink = netlink
        self._endpoints = endpoints
        self._table = table
        self._gossip = gossip
        self._pipeline = pipeline
        self._networks = networks
        self._pools = pools
        self._store = store
        self._names = names
        self._lock = trio.Lock()

    # -- views ------------------------------------------------------------------------------

    def get(self, name: str) -> Attachment:
        """The attachment `name` of this host, or NotFound."""
        try:
            return attachment_of(self._endpoints.get(name), self.node)
        except EndpointNotFound:
            raise NotFound(f"no endpoint {name!r} on this host") from None

    def all(self) -> list[Attachment]:
        """Every attachment of this host, by name."""
        return [attachment_of(r, self.node) for r in self._endpoints.records()]

    def overlay_networks(self) -> set[str]:
        """The overlay networks this host has endpoints in."""
        return {r.network for r in self._endpoints.records()
                if r.mode is Mode.OVERLAY and r.network}

    def ipam_networks(self) -> set[str]:
        """The vxmesh networks this host holds addresses of (overlay, macvlan, ipvlan)."""
        return {r.network for r in self._endpoints.records()
                if r.mode in IPAM_MODES and r.network}

    # -- the operation ----------------------------------------------------------------------

    async def attach(self, request: AttachRequest) -> Attachment:
        """Attach `request.name` to its network; the attachment, or a domain error."""
        async with self._lock:
            if any(r.name == request.name for r in self._endpoints.records()):
                raise Conflict(f"endpoint {request.name!r} already exists on this host")
            network = self._networks.get(request.network) if request.network else None
            if not request.network and request.mode in DEFAULT_NETWORKS:
                network = await self._default_network(request)
                request = dataclasses.replace(request, network=network.name)
            mode = _driver_mode(request, network)
            if mode is Mode.OVERLAY:
                record = await self._attach_overlay(request)
                # Peers learn it now; its NAT egress and resolver are made while it travels.
                self._publish_overlay(record)
            elif network is not None and mode in SEGMENT_MODES:
                record = await self._attach_segment(network, mode, request)
            elif network is not None:  # a bridge network: local to this host
                record = await self._endpoints.create(_with_sandbox(EndpointSpec(
                    name=request.name, mode=Mode.BRIDGE, network=network.name,
                    bridge_network=self._bridge_network(network),
                    addresses=_chosen(network, request), mac=request.mac,
                    publish=request.publish), request))
            elif mode in (Mode.HOST, Mode.NONE):  # endpoint-only
                ip = request.ip  # refused by the endpoint model, naming it
                record = await self._endpoints.create(_with_sandbox(EndpointSpec(
                    name=request.name, mode=request.mode,
                    addresses=(f"{ip}/{32 if ':' not in ip else 128}",) if ip else (),
                    mac=request.mac, publish=request.publish, claims=request.ports), request))
            else:
                raise NotFound(f"no network {request.network!r} (known: "
                               f"{', '.join(self._networks.names()) or 'none'})")
            if mode is Mode.OVERLAY:
                await self.apply_overlay_egress()
            await self._names.refresh()
            return self._names.with_dns(attachment_of(record, self.node))

    async def _attach_overlay(self, request: AttachRequest) -> EndpointRecord:
        network = self._networks.get(request.network)
        if network is None:
            raise NotFound(f"no network {request.network!r} (known: "
                           f"{', '.join(self._networks.names()) or 'none'})")
        address, pool = await self._allocate(network, request, confirm=False)
        ip = str(address)
        allocated = [(address, pool)]
        try:
            addresses = [f"{ip}/{network.subnet.prefixlen}"]
            # Dual stack: an IPv6 address from its own pool, unless the runtime configures a
            # handed-back veth itself and asked for no IPv6 address (Docker's IPv4 networks).
            if network.subnet6 is not None and (
                    request.ip6 is not None or not isinstance(request.sandbox, HandBackVeth)):
                address6, pool6 = await self._allocate(network, request, version=6,
                                                       confirm=False)
                allocated.append((address6, pool6))
                addresses.append(f"{address6}/{network.subnet6.prefixlen}")
            joining = network.name not in self._table.networks()
            if joining:
                self._join_table_network(network.name, trio.current_time())
                self._gossip.records_changed()
                self._pipeline.mark_dirty()
                with trio.move_on_after(NETWORK_SYNC_TIMEOUT):
                    await self._gossip.sync_network(network.name)
            bridge = desired_state.bridge_name(network.vni)
            mtu = network.mtu or desired_state.overlay_mtu(self._facts.mtu, self._facts.address,
                                                           encrypted=network.encrypted)
            # The default route goes via the network's gateway, which every host's bridge
            # carries (overlay.desired); a handed-back veth is the runtime's to route.
            routed = not isinstance(request.sandbox, HandBackVeth)
            gateway6 = network.gateway6 if routed else None
            spec = _with_sandbox(EndpointSpec(
                name=request.name, mode=Mode.OVERLAY, network=network.name, bridge=bridge,
                mtu=mtu, addresses=tuple(addresses), mac=request.mac,
                gateway=str(network.gateway) if routed else None,
                gateway6=None if gateway6 is None else str(gateway6)), request)
            record = await self._create_while_confirming(spec, request, allocated, bridge,
                                                         joining=joining)
        except BaseException:
            for held, held_pool in allocated:
                held_pool.release(held)
            raise
        return record

    async def _create_while_confirming(self, spec: EndpointSpec, request: AttachRequest,
                                       allocated: list[tuple[IPAddress, AddressPool]],
                                       bridge: str, *, joining: bool) -> EndpointRecord:
        """Wait for the bridge and make the endpoint while etcd confirms the addresses taken
        from our blocks (the round trip overlaps the kernel work; the reply still waits for
        both, so etcd holds every address handed out). An address another host recorded in
        our block meanwhile (a chosen one we had not re-read) is replaced by the one etcd
        confirmed, in `allocated` too: the endpoint is made again with it before anyone was
        told the first. A chosen address (`request.ip`, `ip6`) was recorded by the pool."""
        handle = f"{self.node}/{request.name}"
        confirmed = [address for address, _ in allocated]
        chosen = (request.ip, request.ip6)
        failures: list[Exception] = []
        made: list[EndpointRecord] = []

        async def confirm(index: int, pool: AddressPool) -> None:
            try:
                confirmed[index] = await self._confirm(pool, handle, confirmed[index])
            except Exception as exc:  # raised below, after the endpoint is undone
                failures.append(exc)

        async def create() -> None:
            try:
                await self._wait_link(bridge, joining=joining)
                made.append(await self._endpoints.create(spec))
            except Exception as exc:  # raised below (domain errors stay as they are)
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for index, (_, pool) in enumerate(allocated):
                if chosen[index] is None:
                    nursery.start_soon(confirm, index, pool)
            nursery.start_soon(create)
        held = [address for address, _ in allocated]
        allocated[:] = [(address, pool)
                        for address, (_, pool) in zip(confirmed, allocated, strict=True)]
        if made and (failures or confirmed != held):
            await self._endpoints.delete(spec.name)
        if failures:
            raise failures[0]
        if confirmed == held:
            return made[0]
        log.warning("endpoint %s: address %s was recorded by another host meanwhile; it got %s",
                    request.name, ", ".join(map(str, held)), ", ".join(map(str, confirmed)))
        addresses = tuple(f"{address}/{cidr.split('/')[1]}"
                          for address, cidr in zip(confirmed, spec.addresses, strict=True))
        return await self._endpoints.create(dataclasses.replace(spec, addresses=addresses))

    def _publish_overlay(self, record: EndpointRecord) -> None:
        """The endpoint's table entries, their gossip and the pipeline's wake-up, as soon as
        the endpoint exists (an endpoint change is timed until every host's kernel has it)."""
        assert record.mac is not None and record.network  # overlay records (model rule)
        # One table entry per address (same MAC, same names): peers program a neighbor entry
        # (ARP or NDP) for each and one FDB entry for the MAC.
        for entry_ip in record_ips(record):
            self._table.put_endpoint(record.network, entry_ip, record.mac, trio.current_time(),
                                     changed_at=time.time(), attributes=attributes_of(record))
        self._gossip.records_changed()
        self._pipeline.mark_dirty()

    async def _attach_segment(self, network: Network, mode: Mode, request: AttachRequest
                              ) -> EndpointRecord:
        """A macvlan/ipvlan endpoint on the network's parent: its address from the shared
        IPAM (no two hosts hand out the same one), the subnet's prefix, a default route via
        the network's gateway (a router on that segment)."""
        address, pool = await self._allocate(network, request)
        try:
            return await self._endpoints.create(_with_sandbox(EndpointSpec(
                name=request.name, mode=mode, network=network.name,
                addresses=(f"{address}/{network.subnet.prefixlen}",), mac=request.mac,
                mtu=network.mtu, gateway=str(network.gateway),
                parent=network.parent or self._facts.interface,
                ipvlan_mode=network.options.get("ipvlan_mode", "l2")), request))
        except BaseException:
            pool.release(address)
            raise

    async def _default_network(self, request: AttachRequest) -> Network:
        """The network a namespaced mode without a network maps onto (`DEFAULT_NETWORKS`),
        made on first use: `bridge` on the built-in bridge's subnet and kernel bridge (NAT,
        as Docker's default `bridge`); `macvlan` / `ipvlan` on the underlay interface with
        its subnet (the gateway the subnet's first address, as Docker). On the underlay's LAN
        vxmesh cannot know which addresses are free, so those need a chosen address (recorded
        in the shared IPAM: two hosts never take the same)."""
        mode = request.mode
        name = DEFAULT_NETWORKS[mode]
        if mode in SEGMENT_MODES and request.ip is None:
            raise InvalidRequest(f"ip: required with --mode {mode.value} and no --network (the "
                                 f"default network {name!r} is the underlay's LAN, whose free "
                                 f"addresses vxmesh does not know); or create a {mode.value} "
                                 "network with --ip-range and use --network")
        known = self._networks.get(name)
        if known is not None:
            return known
        missing = self._endpoints.capabilities.missing
        if mode.value in missing:
            raise InvalidRequest(f"mode: {mode.value!r}: {missing[mode.value]}")
        if mode in SEGMENT_MODES:
            lan = ipaddress.ip_interface(f"{self._facts.address}/{self._facts.prefixlen}")
            network = validate_network(name=name, subnet=str(lan.network), mode=mode.value,
                                       options={"parent": self._facts.interface})
        else:
            network = validate_network(name=name, subnet=self._endpoints.config.bridges[0].subnet,
                                       mode=mode.value)
        try:
            created = await self._store.create_network(network)
            log.info("made the default %s network %s (%s)", mode.value, name, created.subnet)
        except NetworkConflict as exc:  # another host made it a moment ago
            if exc.field != "name":
                raise
            created = await self._wait_network(name)
        self._networks.put(created)
        return created

    async def _wait_network(self, name: str, timeout: float = NETWORK_WAIT) -> Network:
        """Network `name`, once the network watch brought it (another host created it)."""
        with trio.move_on_after(timeout):
            while (network := self._networks.get(name)) is None:
                await trio.sleep(0.1)
            return network
        raise Unavailable(f"network {name!r} exists in etcd but did not reach this host "
                          f"within {timeout:.0f} s")

    def _bridge_network(self, network: Network) -> BridgeNetwork:
        """The local bridge of a bridge-driver network: its own kernel bridge, NAT egress
        unless internal (`--opt masquerade=false`: routed, no NAT); addresses are handed out
        on this host (the lowest free one)."""
        if network.subnet.version != 4:
            raise InvalidRequest(f"network {network.name!r}: bridge networks take an IPv4 "
                                 f"subnet (got {network.subnet})")
        builtin = self._endpoints.config.bridges[0]  # the default `bridge` keeps its bridge
        ifname = builtin.ifname if network.name == DEFAULT_NETWORKS[Mode.BRIDGE] \
            else bridge_ifname(network.name)
        return BridgeNetwork(
            name=network.name, ifname=ifname, subnet=str(network.subnet),
            gateway_mode="internal" if network.internal
            else "routed" if network.options.get("masquerade") == "false" else "nat",
            mtu=network.mtu or self._facts.mtu, gateway_address=str(network.gateway),
            subnet6=None if network.subnet6 is None else str(network.subnet6))

    async def _allocate(self, network: Network, request: AttachRequest, *, version: int = 4,
                        confirm: bool = True) -> tuple[IPAddress, AddressPool]:
        """`request.ip` (`version` 6: `request.ip6`) if given (checked and recorded in etcd by
        the pool), else the next free one of our blocks, with `confirm` confirmed in etcd
        (`_confirm`); without, the caller confirms it before it answers."""
        pool = await self._pools.get(network, version)
        handle = f"{self.node}/{request.name}"
        chosen = request.ip if version == 4 else request.ip6
        if chosen is not None:
            return await pool.allocate_address(handle, chosen), pool
        address = await pool.allocate(handle)
        if confirm:
            address = await self._confirm(pool, handle, address)
        return address, pool

    async def _confirm(self, pool: AddressPool, handle: str, address: IPAddress) -> IPAddress:
        """`handle`'s address as etcd holds it after a flush (another host may have recorded a
        chosen address in our block that we had not re-read yet); `address` while etcd is
        away (flushed later)."""
        if not self._store.statistics().degraded:
            with contextlib.suppress(StoreUnavailable):
                return await pool.confirm(handle)
        return address

    async def _wait_link(self, name: str, *, joining: bool,
                         timeout: float = BRIDGE_TIMEOUT) -> None:
        """Wait until the network's bridge `name` is wanted and exists. When `joining` (this
        attach joins the network), also until a reconciler pass made after that holds it:
        the bridge of a network this host just left (its last endpoint deleted) may still be
        there, about to go, and must not be taken for the new one. A network joined before
        keeps its bridge while it has endpoints, so the next attach does not wait for the
        reconciler (which is busy with the previous attach's entries, tens of ms), nor look
        the bridge up here: the endpoint service refuses an endpoint whose bridge is missing."""
        reconciler = self._pipeline.reconciler
        if not joining and self._bridge_wanted(name):
            return  # held since that join; the endpoint service checks it exists (one hop
            # less on the netlink thread the reconciler keeps busy)
        with trio.move_on_after(timeout):
            while True:
                if self._bridge_wanted(name) \
                        and (not joining or reconciler.statistics().in_sync) \
                        and await self._netlink.call(
                            lambda ipr: links.get_link(ipr, name)) is not None:
                    return
                with trio.move_on_after(0.1):  # or a pipeline recompute in between
                    await reconciler.wait_applied()
        raise Unavailable(f"bridge {name} did not appear within {timeout:.0f} s "
                          "(see `vxmesh fdb` and the agent's log)")

    def _bridge_wanted(self, name: str) -> bool:
        return any(n.bridge == name for n in self._pipeline.desired_networks().values())

    async def detach(self, name: str) -> bool:
        """Detach `name`: table entry withdrawn, endpoint deleted, address released. False if
        this host holds no attachment of that name (detaching twice is harmless)."""
        async with self._lock:
            try:
                record = self._endpoints.get(name)
            except EndpointNotFound:
                return False
            ips = record_ips(record)
            network_name = record.network or ""
            now = trio.current_time()
            overlay = record.mode is Mode.OVERLAY
            for ip in ips if overlay else ():
                if self._table.get(network_name, self.node, ip) is not None:
                    self._table.delete_endpoint(network_name, ip, now, changed_at=time.time())
                    self._gossip.records_changed()
            await self._endpoints.delete(name)
            await self._names.refresh()
            if overlay:
                self._after_overlay_detach(network_name, now)
                await self.apply_overlay_egress()
            if record.mode in IPAM_MODES:
                for ip in ips:
                    await self._release(name, network_name, ip)
            return True

    async def set_aliases(self, name: str, aliases: tuple[str, ...]) -> Attachment:
        """Publish `aliases` as the names of attachment `name` (replacing its aliases): in its
        record (kept across restarts), its table entry and the local resolvers."""
        async with self._lock:
            try:
                record = self._endpoints.get(name)
            except EndpointNotFound:
                raise NotFound(f"no endpoint {name!r} on this host") from None
            try:
                make_attributes(aliases=aliases)
            except InvalidAttributes as exc:
                raise InvalidRequest(str(exc)) from None
            record = await self._endpoints.set_aliases(name, aliases)
            ip = first_ip(record)
            if record.mode is Mode.OVERLAY and ip and record.network \
                    and self._table.get(record.network, self.node, ip) is not None:
                self._publish_overlay(record)  # every address's entry carries the names
            await self._names.refresh()
            return self._names.with_dns(attachment_of(record, self.node))

    def _after_overlay_detach(self, network_name: str, now: float) -> None:
        if network_name not in self.overlay_networks() \
                and network_name in self._table.networks():
            self._table.leave_network(network_name, now)
            self._gossip.records_changed()
        self._pipeline.mark_dirty()

    async def _release(self, name: str, network_name: str, ip: str) -> None:
        network = self._networks.get(network_name)
        if network is not None and ip:
            address = ipaddress.ip_address(ip)
            try:
                pool = await self._pools.get(network, address.version)
                pool.release(address)
            except AgentError as exc:
                log.warning("endpoint %s: address %s not released yet: %s", name, ip, exc)

    async def apply_overlay_egress(self) -> None:
        """NAT egress (unless internal) and isolation of the overlay networks this host has
        endpoints in (`underlay.nat_table.OverlayEgress`); at start and after every change."""
        overlays = []
        in_force = {o.name: o for o in self._endpoints.overlay_egress()}
        for name in sorted(self.overlay_networks()):
            network = self._networks.get(name)
            if network is None and name in in_force:  # not known yet (etcd away, no copy):
                overlays.append(in_force[name])  # keep its rules as the last run left them
            elif network is not None and network.subnet.version == 4:
                overlays.append(OverlayEgress(
                    name, desired_state.bridge_name(network.vni), str(network.subnet),
                    network.internal, None if network.subnet6 is None else str(network.subnet6)))
        await self._endpoints.set_overlay_egress(tuple(overlays))

    # -- restart ----------------------------------------------------------------------------

    def _join_table_network(self, name: str, now: float) -> None:
        """Join `name` in the table; remote records there must then be inside its subnet."""
        self._table.join_network(name, now)
        network = self._networks.get(name)
        if network is not None:
            self._table.set_subnet(name, str(network.subnet), str(network.gateway))
            if network.subnet6 is not None:
                self._table.set_subnet(name, str(network.subnet6), str(network.gateway6))

    def republish(self) -> None:
        """Our overlay endpoints go back into the table before gossip joins (restart)."""
        now = trio.current_time()
        for record in self._endpoints.records():
            if record.mode is not Mode.OVERLAY or not record.addresses or not record.mac \
                    or not record.network:
                continue
            if record.network not in self._table.networks():
                self._join_table_network(record.network, now)
            for ip in record_ips(record):
                self._table.put_endpoint(record.network, ip, record.mac, now,
                                         changed_at=time.time(),
                                         attributes=attributes_of(record))


def _chosen(network: Network, request: AttachRequest) -> tuple[str, ...]:
    """A bridge endpoint's chosen addresses (`--ip`, `--ip6`) with their subnets' prefixes."""
    chosen = []
    for ip, subnet in ((request.ip, network.subnet), (request.ip6, network.subnet6)):
        if ip is None:
            continue
        if subnet is None:
            raise InvalidRequest(f"ip6: {ip!r}: network {network.name!r} has no IPv6 subnet")
        chosen.append(f"{ip}/{subnet.prefixlen}")
    return tuple(chosen)


SEGMENT_MODES = frozenset({Mode.MACVLAN, Mode.IPVLAN})
#: The vxmesh network an endpoint of a namespaced mode without --network joins, made on
#: first use (`Attachments._default_network`); Docker's default network is `bridge` too.
DEFAULT_NETWORKS = {Mode.BRIDGE: "bridge", Mode.MACVLAN: "macvlan", Mode.IPVLAN: "ipvlan"}
IPAM_MODES = frozenset({Mode.OVERLAY, Mode.MACVLAN, Mode.IPVLAN})


def _driver_mode(request: AttachRequest, network: Network | None) -> Mode:
    """The mode of the endpoint: a vxmesh network's driver decides (the request's mode is
    the default, overlay, or must name that driver); host and none keep their endpoint-only
    meaning (bridge/macvlan/ipvlan without a network got their default network already)."""
    if network is None or request.mode in (Mode.HOST, Mode.NONE):
        mode = request.mode
    else:
        mode = Mode(network.driver)
        if request.mode not in (Mode.OVERLAY, mode):
            raise InvalidRequest(f"mode: {request.mode.value!r} does not match network "
                                 f"{network.name!r}, a {mode.value} network (leave --mode out)")
    if request.ip6 and (network is None or network.subnet6 is None
                        or mode not in (Mode.BRIDGE, Mode.OVERLAY)):
        raise InvalidRequest(f"ip6: {request.ip6!r}: IPv6 addresses are for bridge and overlay "
                             f"networks with --subnet6 ({request.network or 'no network'} is "
                             f"{mode.value}"
                             f"{'' if network is None or network.subnet6 else ' without one'})")
    if request.publish and mode is not Mode.BRIDGE:
        raise InvalidRequest(f"publish: only endpoints of bridge networks publish ports "
                             f"({request.network or 'no network'} is {mode.value})")
    return mode


def _with_sandbox(spec: EndpointSpec, request: AttachRequest) -> EndpointSpec:
    """`spec` with the request's sandbox, interface name, aliases and labels."""
    sandbox = request.sandbox
    return dataclasses.replace(
        spec, ifname=request.ifname,
        netns_path=sandbox.path if isinstance(sandbox, ExistingNetns) else None,
        hand_back=isinstance(sandbox, HandBackVeth), aliases=request.aliases,
        labels=request.labels, services=request.services)
