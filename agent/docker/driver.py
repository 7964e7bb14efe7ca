"""The Docker network and IPAM driver's decisions: Docker's ids and calls onto vxmesh operations.

Owns: which vxmesh network a Docker network id or pool is (`<state_dir>/docker.json`, written
atomically before an answer goes back), the addresses Docker's IPAM calls hold, the endpoints
Docker created and joined, and the clean-up of endpoints whose containers vanished while the
agent was away. Docker-specific: nothing outside agent/docker/ knows Docker ids.

Rules:
- A network is found by its subnet: `docker network create -d vxmesh --ipam-driver vxmesh
  --subnet S NAME` adopts the vxmesh network whose subnet is S, or creates vxmesh network NAME
  with subnet S (Docker's CreateNetwork names only an id: the name is read from the Engine API
  once Docker has stored the network, at the latest when the first address is asked for).
  A subnet that overlaps another vxmesh network is refused naming it.
- IPv6 (`docker network create --ipv6 --subnet S --subnet S6`, and every mirrored network
  with a subnet6): the IPv6 pool is the vxmesh network's subnet6 (S6 must be it, or becomes it
  when the network is created here); containers' IPv6 addresses come from its IPv6 pool, held
  under the same handle as their IPv4 address (the attachment's), so the attach keeps both.
- Gateway: the vxmesh network's (first address of the subnet, and of subnet6); a different
  `--gateway` is refused. Join answers no gateway, so Docker adds its `docker_gwbridge` for
  egress and published ports (`-p`), as it does for its own overlay.
- Addresses come from the vxmesh address pools: a taken `--ip` is refused naming its holder.
  An address Docker's own IPAM handed out (`-d vxmesh` without `--ipam-driver vxmesh`) is
  reserved in the pool at CreateEndpoint, so two hosts never use it twice.
- The endpoint's MAC: the user's `--mac-address`, else Docker's rule, `02:42` + IPv4 octets.
- `docker network rm` on any host deletes the vxmesh network (refused while endpoints exist
  elsewhere); a network already gone from vxmesh (the mirror removing it) is just forgotten.
- Clean-up: an endpoint recorded before this agent started that Docker no longer lists is
  detached and its address released.

- Names: Docker tells a driver no container name, so after a Join the container holding the
  endpoint is looked up in the Engine API (retried until Docker lists it, `NAMES_TIMEOUT`):
  its name and its aliases on that network (`--network-alias`, the short id) become the
  attachment's aliases, so every host's resolver answers them (`container_names`).
- Before a Join is answered, Docker's FORWARD policy lets the network's bridged traffic
  through (agent.docker.forwarding).

May import: agent.api.errors, agent.docker (protocol, engine, forwarding), agent.state_files,
agent.store.schema (the Network record), overlay.desired (bridge names), overlay.attributes,
underlay.endpoints_model (the MAC rule), trio, the standard library.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from agent.api.errors import Conflict, InvalidRequest, NotFound, Unavailable
from agent.docker import protocol as p
from agent.docker.engine import EngineClient, EngineError
from agent.docker.forwarding import ensure_bridge_accepted, remove_bridge_accepted
from agent.errors import AgentError
from agent.state_files import StateReadError, write_atomically
from agent.store.errors import NetworkInUse
from agent.store.schema import Network
from overlay.attributes import LABEL, MAX_ALIASES
from overlay.desired import bridge_name
from underlay.endpoints_model import mac_for_address

log = logging.getLogger("vxmesh.docker")

NAME_TIMEOUT = 5.0  # how long a call waits for Docker to store a network it is creating
RELEASE_WAIT = 5.0  # how long docker network rm waits for addresses still being released
NETWORK_OPTIONS = ("vni", "mtu", "io.vxmesh.network")
ENDPOINT_PREFIX = "docker-"
NAMES_TIMEOUT = 30.0  # how long after a Join the container's name is looked for


@dataclass(frozen=True)
class Attachment:
    """What attaching an endpoint made: the host-side interface Docker moves into the sandbox."""

    interface: str
    mtu: int


class Mesh(Protocol):
    """The vxmesh operations the Docker driver stands on (agent.runtime implements it).

    `reserve_address(network, handle, address)` holds an address for `handle`
    (`<node>/<endpoint name>`) in the network's pool; `attach(name, ...)` then finds it held by
    its own handle and keeps it (the pool's allocations are idempotent per handle);
    `detach(name)` releases it (False: no such attachment, nothing released).
    """

    @property
    def node(self) -> str: ...
    def networks(self) -> Mapping[str, Network]: ...
    async def create_network(self, name: str, subnet: str, *, vni: int | None,
                             mtu: int | None, subnet6: str | None = None) -> Network: ...
    async def delete_network(self, name: str) -> None: ...
    async def reserve_address(self, network: str, handle: str,
                              address: p.IPAddress | None, version: int = 4) -> p.IPAddress: ...
    async def release_address(self, network: str, address: p.IPAddress) -> None: ...
    async def attach(self, name: str, network: str, address: p.IPInterface, mac: str,
                     labels: tuple[tuple[str, str], ...],
                     address6: p.IPInterface | None = None) -> Attachment: ...
    async def detach(self, name: str) -> bool: ...
    async def set_aliases(self, name: str, aliases: tuple[str, ...]) -> None: ...


@dataclass
class EndpointState:
    """One Docker endpoint as the driver keeps it; `name` is its vxmesh attachment's."""

    name: str
    network: str
    network_id: str
    address: str  # CIDR
    mac: str
    handle: str
    created_at: float
    sandbox: str = ""
    interface: str = ""
    address6: str = ""  # CIDR, "" without IPv6


@dataclass
class DriverState:
    """`<state_dir>/docker.json`."""

    networks: dict[str, str] = field(default_factory=dict)  # Docker network id -> vxmesh name
    reservations: dict[str, str] = field(default_factory=dict)  # "net/ip" -> handle
    endpoints: dict[str, EndpointState] = field(default_factory=dict)


@dataclass
class _Pending:
    """A Docker network whose vxmesh network is not known yet (waiting for its name)."""

    subnet: p.IPNetwork
    name: str  # from `-o io.vxmesh.network=NAME`, else "" (Docker's name)
    vni: int | None
    mtu: int | None
    subnet6: p.IPNetwork | None = None
    done: trio.Event = field(default_factory=trio.Event)
    error: str = ""


@dataclass(frozen=True)
class DriverStatistics:
    networks: int
    pending_networks: int
    endpoints: int
    joined: int
    reservations: int
    cleaned_up: int


def container_names(container: Mapping[str, Any], endpoint_id: str) -> tuple[str, ...] | None:
    """The names the container (an Engine API inspect or list item) has on the network of
    Docker endpoint `endpoint_id`: its name, then its aliases there, lower-case DNS labels
    without repeats (at most `MAX_ALIASES`); None when that endpoint is not the container's."""
    settings = container.get("NetworkSettings") or {}
    networks = settings.get("Networks") or {}
    joined = [n for n in networks.values()
              if isinstance(n, dict) and n.get("EndpointID") == endpoint_id]
    if not joined:
        return None
    raw = [container.get("Name", ""), *(container.get("Names") or ())[:1],
           *(joined[0].get("Aliases") or ())]
    names: list[str] = []
    for value in raw:
        label = str(value).lstrip("/").lower()
        if LABEL.fullmatch(label) and label not in names and len(names) < MAX_ALIASES:
            names.append(label)
    return tuple(names)


def endpoint_name(endpoint_id: str) -> str:
    """The vxmesh name of a Docker endpoint whose address Docker's own IPAM chose."""
    return ENDPOINT_PREFIX + endpoint_id[:12]


class VxmeshDockerDriver:
    """The `agent.docker.plugin.DockerDriver` on top of a `Mesh`."""

    def __init__(self, mesh: Mesh, engine: EngineClient, state_path: Path, *,
                 rng: random.Random) -> None:
        self.mesh = mesh
        self.engine = engine
        self.state_path = state_path
        self.rng = rng
        self.started_at = time.time()
        self.state = _load(state_path)
        self._pending: dict[str, _Pending] = {}
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._cleaned = 0
        self._accepted: set[str] = set()  # bridges whose DOCKER-USER rule is in place

    def statistics(self) -> DriverStatistics:
        return DriverStatistics(
            networks=len(self.state.networks), pending_networks=len(self._pending),
            endpoints=len(self.state.endpoints),
            joined=sum(1 for e in self.state.endpoints.values() if e.interface),
            reservations=len(self.state.reservations), cleaned_up=self._cleaned)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the background work (network names, clean-up) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- networks -----------------------------------------------------------------------------

    def _by_subnet(self, subnet: p.IPNetwork) -> Network | None:
        """The vxmesh network whose subnet (or subnet6) is `subnet`; an overlap is refused."""
        for network in self.mesh.networks().values():
            if subnet in (network.subnet, network.subnet6):
                return network
        for network in self.mesh.networks().values():
            for held in (network.subnet, network.subnet6):
                if held is not None and held.version == subnet.version \
                        and held.overlaps(subnet):
                    raise Conflict(f"Pool: {subnet} overlaps vxmesh network {network.name!r} "
                                   f"({held}); use its subnet to join it")
        return None

    async def request_pool(self, request: p.PoolRequest) -> p.IPNetwork:
        assert request.pool is not None
        self._by_subnet(request.pool)  # refuses overlaps before Docker makes anything
        return request.pool

    async def release_pool(self, request: p.PoolRelease) -> None:
        return None  # pools are subnets: nothing is held per pool

    async def create_network(self, request: p.NetworkCreate) -> None:
        if len(request.ipv6) > 1 or (request.ipv6 and not request.enable_ipv6):
            raise InvalidRequest(f"IPv6Data: {len(request.ipv6)} pools given; a vxmesh network "
                                 "has at most one IPv6 subnet (with --ipv6)")
        if request.enable_ipv6 and not request.ipv6:
            raise InvalidRequest("IPv6Data: --ipv6 needs --subnet with an IPv6 subnet on a "
                                 "vxmesh network")
        data6 = request.ipv6[0] if request.ipv6 else None
        if data6 is not None and data6.aux_addresses:
            raise InvalidRequest(f"IPv6Data[0].AuxAddresses.{sorted(data6.aux_addresses)[0]}: "
                                 "--aux-address is not supported on vxmesh networks")
        if len(request.ipv4) != 1:
            raise InvalidRequest(f"IPv4Data: {len(request.ipv4)} pools given; a vxmesh network "
                                 "has exactly one subnet")
        data = request.ipv4[0]
        if data.aux_addresses:
            key = sorted(data.aux_addresses)[0]
            raise InvalidRequest(f"IPv4Data[0].AuxAddresses.{key}: --aux-address is not "
                                 "supported on vxmesh networks")
        unknown = sorted(set(request.driver_options) - set(NETWORK_OPTIONS))
        if unknown:
            raise InvalidRequest(f"Options.{unknown[0]}: unknown driver option (known: "
                                 f"{', '.join(NETWORK_OPTIONS)})")
        options = dict(request.driver_options)
        network = self._by_subnet(data.pool)
        wanted_name = options.get("io.vxmesh.network")
        if network is not None:
            if wanted_name and wanted_name != network.name:
                raise Conflict(f"Pool: {data.pool} is vxmesh network {network.name!r}, "
                               f"not {wanted_name!r}")
            self._check_gateway(network, data.gateway)
            if data6 is not None:
                if data6.pool != network.subnet6:
                    raise InvalidRequest(f"IPv6Data[0].Pool: {data6.pool} is not the IPv6 subnet "
                                         f"of vxmesh network {network.name!r} "
                                         f"({network.subnet6 or 'none'})")
                if data6.gateway is not None and data6.gateway.ip != network.gateway6:
                    raise InvalidRequest(f"IPv6Data[0].Gateway: {data6.gateway.ip} is not the "
                                         f"IPv6 gateway of vxmesh network {network.name!r} "
                                         f"({network.gateway6}); drop it")
            await self._bind(request.network_id, network.name)
            return
        if data6 is not None:
            self._by_subnet(data6.pool)  # an overlap is refused before anything is made
        self._pending[request.network_id] = _Pending(
            data.pool, wanted_name or "", _int_option(options, "vni"), _int_option(options, "mtu"),
            None if data6 is None else data6.pool)
        if self._nursery is not None:
            self._nursery.start_soon(self._resolve_pending, request.network_id)

    @staticmethod
    def _check_gateway(network: Network, gateway: p.IPInterface | None) -> None:
        if gateway is not None and gateway.ip != network.gateway:
            raise InvalidRequest(f"Gateway: {gateway.ip} is not the gateway of vxmesh network "
                                 f"{network.name!r} ({network.gateway}); drop --gateway")

    async def _bind(self, network_id: str, name: str) -> None:
        async with self._lock:
            self.state.networks[network_id] = name
            self._save()

    async def _resolve_pending(self, network_id: str) -> None:
        """Learn the name Docker gave network `network_id`, then create it in vxmesh."""
        pending = self._pending.get(network_id)
        if pending is None:
            return
        try:
            name = await self._docker_name(network_id)
            network = self._by_subnet(pending.subnet)
            if network is None:
                network = await self.mesh.create_network(
                    pending.name or name, str(pending.subnet), vni=pending.vni, mtu=pending.mtu,
                    subnet6=None if pending.subnet6 is None else str(pending.subnet6))
                log.info("docker network %s (%s): created vxmesh network %s (VNI %d)", name,
                         network_id[:12], network.name, network.vni)
            await self._bind(network_id, network.name)
        except AgentError as exc:  # reported to the call that waits for it
            pending.error = str(exc)
            log.error("docker network %s: cannot make its vxmesh network: %s",
                      network_id[:12], exc)
        finally:
            self._pending.pop(network_id, None)
            pending.done.set()

    async def _docker_name(self, network_id: str) -> str:
        with trio.move_on_after(NAME_TIMEOUT):
            while True:
                found = await trio.to_thread.run_sync(self.engine.network, network_id)
                if found is not None and found.name:
                    return found.name
                await trio.sleep(0.02)
        raise Unavailable(f"NetworkID: {network_id}: Docker did not list this network within "
                          f"{NAME_TIMEOUT:.0f} s")

    async def _network_of(self, network_id: str) -> str:
        """The vxmesh network of a Docker network id (waiting for a pending one, bounded)."""
        pending = self._pending.get(network_id)
        if pending is not None:
            with trio.move_on_after(NAME_TIMEOUT + 2):
                await pending.done.wait()
            if pending.error:
                raise Unavailable(f"NetworkID: {network_id}: {pending.error}")
        name = self.state.networks.get(network_id)
        if name is None:
            raise NotFound(f"NetworkID: {network_id} is not a vxmesh network on this host")
        return name

    async def _network_of_pool(self, pool: p.IPNetwork) -> Network:
        """The vxmesh network of a pool (waiting for a pending network of that subnet)."""
        for network_id, pending in list(self._pending.items()):
            if pool in (pending.subnet, pending.subnet6):
                await self._network_of(network_id)
        network = self._by_subnet(pool)
        if network is None:
            raise NotFound(f"PoolID: {p.pool_id(pool)}: no vxmesh network has subnet {pool}")
        return network

    async def delete_network(self, request: p.NetworkRef) -> None:
        name = self.state.networks.get(request.network_id)
        if name is None:
            self._pending.pop(request.network_id, None)
            return
        others = [i for i, n in self.state.networks.items()
                  if n == name and i != request.network_id]
        network = self.mesh.networks().get(name)
        if network is not None and not others:
            await self._delete_when_released(name)
            log.info("docker network rm: deleted vxmesh network %s", name)
            await trio.to_thread.run_sync(remove_bridge_accepted, bridge_name(network.vni))
            self._accepted.discard(bridge_name(network.vni))
        async with self._lock:
            self.state.networks.pop(request.network_id, None)
            self._save()

    async def _delete_when_released(self, name: str) -> None:
        """Delete the vxmesh network; while its last endpoints' addresses are still being
        released (`docker rm -f` on another host a moment ago: pools write releases back in
        batches), ask again for up to RELEASE_WAIT seconds before refusing."""
        with trio.move_on_after(RELEASE_WAIT):
            while True:
                try:
                    await self.mesh.delete_network(name)
                    return
                except NetworkInUse:
                    await trio.sleep(0.2)
        await self.mesh.delete_network(name)  # still in use: refused, naming the endpoints

    # -- addresses ----------------------------------------------------------------------------

    async def request_address(self, request: p.AddressRequest) -> p.IPAddress:
        if request.gateway:
            network = self._by_subnet(request.pool)
            gateway = request.pool.network_address + 1  # vxmesh's rule, for either family
            if network is not None:
                gateway = network.gateway if request.pool == network.subnet \
                    else network.gateway6 or gateway
            if request.address is not None and request.address != gateway:
                raise InvalidRequest(f"Address: --gateway {request.address} is not the gateway "
                                     f"of the vxmesh network ({gateway}); drop --gateway")
            return gateway
        network = await self._network_of_pool(request.pool)
        # The attachment's name is chosen now (Docker names the endpoint only later), so that
        # the pool's handle of this address is the one the attach operation uses.
        handle = f"{self.mesh.node}/{ENDPOINT_PREFIX}{self.rng.getrandbits(48):012x}"
        address = await self.mesh.reserve_address(network.name, handle, request.address,
                                                  request.pool.version)
        async with self._lock:
            self.state.reservations[f"{network.name}/{address}"] = handle
            self._save()
        return address

    async def release_address(self, request: p.AddressRelease) -> None:
        network = self._by_subnet(request.pool)
        if network is None or request.address in (network.gateway, network.gateway6):
            return
        key = f"{network.name}/{request.address}"
        if key not in self.state.reservations:
            return
        await self.mesh.release_address(network.name, request.address)
        async with self._lock:
            self.state.reservations.pop(key, None)
            self._save()

    # -- endpoints ----------------------------------------------------------------------------

    def _endpoint(self, endpoint_id: str) -> EndpointState:
        endpoint = self.state.endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"EndpointID: {endpoint_id} is not a vxmesh endpoint on this host")
        return endpoint

    async def create_endpoint(self, request: p.EndpointCreate) -> str | None:
        name = await self._network_of(request.network_id)
        address6 = request.address_v6
        if address6 is not None and (network := self.mesh.networks().get(name)) is not None \
                and network.subnet6 is None:
            raise InvalidRequest(f"Interface.AddressIPv6: {address6}: vxmesh network {name!r} "
                                 "has no IPv6 subnet")
        if request.address is None:
            raise InvalidRequest("Interface.Address: required (an IPv4 address from the IPAM "
                                 "driver)")
        address = request.address
        key = f"{name}/{address.ip}"
        handle = self.state.reservations.get(key)
        if handle is None:  # Docker's own IPAM chose it: hold it in vxmesh's pool too
            handle = f"{self.mesh.node}/{endpoint_name(request.endpoint_id)}"
            await self.mesh.reserve_address(name, handle, address.ip)
        if address6 is not None:
            await self._hold_under(name, address6.ip, handle)
        mac = request.mac or mac_for_address(str(address))
        async with self._lock:
            self.state.reservations[key] = handle
            if address6 is not None:
                self.state.reservations[f"{name}/{address6.ip}"] = handle
            self.state.endpoints[request.endpoint_id] = EndpointState(
                name=handle.split("/", 1)[1], network=name, network_id=request.network_id,
                address=str(address), mac=mac, handle=handle, created_at=time.time(),
                address6="" if address6 is None else str(address6))
            self._save()
        return None if request.mac else mac

    async def _hold_under(self, network: str, address6: p.IPAddress, handle: str) -> None:
        """Hold IPv6 `address6` under `handle` (the IPv4 address's, which the attach uses):
        Docker asked for it separately (another handle), or its own IPAM chose it."""
        held = self.state.reservations.get(f"{network}/{address6}")
        if held == handle:
            return
        if held is not None:  # our own block: free locally, taken again at once
            await self.mesh.release_address(network, address6)
        await self.mesh.reserve_address(network, handle, address6, 6)

    def endpoint_info(self, request: p.EndpointRef) -> dict[str, Any]:
        endpoint = self._endpoint(request.endpoint_id)
        return {"vxmesh.network": endpoint.network, "vxmesh.address": endpoint.address,
                "vxmesh.mac": endpoint.mac, "vxmesh.node": self.mesh.node,
                "vxmesh.interface": endpoint.interface}

    @staticmethod
    def _keys(endpoint: EndpointState) -> list[tuple[str, p.IPAddress]]:
        """(reservation key, address) of each of the endpoint's addresses."""
        return [(f"{endpoint.network}/{iface.ip}", iface.ip)
                for iface in map(ipaddress.ip_interface,
                                 filter(None, (endpoint.address, endpoint.address6)))]

    async def join(self, request: p.JoinRequest) -> p.JoinAnswer:
        endpoint = self._endpoint(request.endpoint_id)
        labels = (("docker.endpoint", request.endpoint_id[:12]),
                  ("docker.network", request.network_id[:12]))
        network = self.mesh.networks().get(endpoint.network)
        if network is not None and bridge_name(network.vni) not in self._accepted:
            bridge = bridge_name(network.vni)
            if await trio.to_thread.run_sync(ensure_bridge_accepted, bridge):
                self._accepted.add(bridge)  # Docker never flushes DOCKER-USER
        try:
            attached = await self.mesh.attach(
                endpoint.name, endpoint.network, ipaddress.ip_interface(endpoint.address),
                endpoint.mac, labels,
                ipaddress.ip_interface(endpoint.address6) if endpoint.address6 else None)
        except BaseException:
            async with self._lock:  # a failed attach gives its addresses back to the pool
                for key, _ in self._keys(endpoint):
                    self.state.reservations.pop(key, None)
                self._save()
            raise
        async with self._lock:
            endpoint.sandbox = request.sandbox_key
            endpoint.interface = attached.interface
            self._save()
        if self._nursery is not None:
            self._nursery.start_soon(self._publish_names, request.endpoint_id)
        return p.JoinAnswer(interface=attached.interface)

    async def _publish_names(self, endpoint_id: str) -> None:
        """Once Docker lists the container of a joined endpoint, publish its names."""
        delay = 0.05
        deadline = trio.current_time() + NAMES_TIMEOUT
        names = None
        while names is None and trio.current_time() < deadline:
            await trio.sleep(delay)  # Docker records the endpoint after the Join returns
            delay = min(delay * 2, 1.0)
            names = await trio.to_thread.run_sync(self._names_of_endpoint, endpoint_id)
        endpoint = self.state.endpoints.get(endpoint_id)
        if not names or endpoint is None or not endpoint.interface:
            return  # no name found in time, or left meanwhile
        try:
            await self.mesh.set_aliases(endpoint.name, names)
        except AgentError as exc:
            log.warning("endpoint %s: names %s not published: %s", endpoint.name, names, exc)

    def _names_of_endpoint(self, endpoint_id: str) -> tuple[str, ...] | None:
        """Blocking: the names of the container holding `endpoint_id`, None if not found."""
        try:
            for listed in self.engine.containers():
                if container_names(listed, endpoint_id) is not None:
                    found = self.engine.container(str(listed.get("Id", "")))
                    return container_names(found, endpoint_id) if found else None
        except EngineError as exc:
            log.debug("endpoint %s: container not looked up: %s", endpoint_id[:12], exc)
        return None

    async def leave(self, request: p.EndpointRef) -> None:
        endpoint = self._endpoint(request.endpoint_id)
        await self._detach(endpoint)

    async def _detach(self, endpoint: EndpointState) -> None:
        """Detach (which releases the address) and forget the reservation; an attachment the
        agent no longer holds (removed at its start) has its address released here."""
        detached = await self.mesh.detach(endpoint.name)
        keys = self._keys(endpoint)
        for key, address in keys:
            if not detached and key in self.state.reservations:
                await self.mesh.release_address(endpoint.network, address)
        async with self._lock:
            for key, _ in keys:
                self.state.reservations.pop(key, None)
            endpoint.sandbox = ""
            endpoint.interface = ""
            self._save()

    async def delete_endpoint(self, request: p.EndpointRef) -> None:
        endpoint = self.state.endpoints.get(request.endpoint_id)
        if endpoint is None:
            return
        if endpoint.interface:  # deleted without a Leave
            await self._detach(endpoint)
        keys = self._keys(endpoint)
        own = endpoint.name == endpoint_name(request.endpoint_id)
        for key, address in keys:
            if own and key in self.state.reservations:
                # Reserved at CreateEndpoint (Docker's IPAM chose it): no ReleaseAddress comes.
                await self.mesh.release_address(endpoint.network, address)
        async with self._lock:
            if own:
                for key, _ in keys:
                    self.state.reservations.pop(key, None)
            self.state.endpoints.pop(request.endpoint_id, None)
            self._save()

    async def program_external(self, request: p.ExternalConnectivity) -> None:
        self._endpoint(request.endpoint_id)  # docker_gwbridge publishes the ports

    async def revoke_external(self, request: p.EndpointRef) -> None:
        return None

    # -- clean-up -----------------------------------------------------------------------------

    async def clean_up(self) -> int:
        """Forget endpoints (and their addresses) recorded before this agent started that
        Docker no longer lists: their containers went while the agent was away."""
        stale: list[str] = []
        for network_id in sorted({e.network_id for e in self.state.endpoints.values()}):
            found = await trio.to_thread.run_sync(self.engine.network, network_id)
            listed = set(found.endpoints) if found is not None else set()
            stale += [eid for eid, e in self.state.endpoints.items()
                      if e.network_id == network_id and eid not in listed
                      and e.created_at < self.started_at]
        for endpoint_id in stale:
            endpoint = self.state.endpoints[endpoint_id]
            log.info("docker endpoint %s (%s on %s): its container is gone; cleaning up",
                     endpoint.name, endpoint.address, endpoint.network)
            await self._detach(endpoint)
            async with self._lock:
                self.state.endpoints.pop(endpoint_id, None)
                self._save()
            self._cleaned += 1
        return len(stale)

    async def run_clean_up(self, *, interval: float = 5.0,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        """Clean up once Docker answers (retrying while it does not), then stop."""
        task_status.started()
        while True:
            try:
                await self.clean_up()
                return
            except EngineError as exc:
                log.debug("docker clean-up waits for dockerd: %s", exc)
            await trio.sleep(interval)

    def _save(self) -> None:
        raw = {"networks": self.state.networks, "reservations": self.state.reservations,
               "endpoints": {k: asdict(v) for k, v in self.state.endpoints.items()}}
        write_atomically(self.state_path, json.dumps(raw, indent=1, sort_keys=True) + "\n",
                         0o600)


def _int_option(options: Mapping[str, str], key: str) -> int | None:
    text = options.get(key)
    if text is None:
        return None
    if not text.isdigit():
        raise InvalidRequest(f"Options.{key}: {text!r} is not a number")
    return int(text)


def _load(path: Path) -> DriverState:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return DriverState()
    except (OSError, ValueError) as exc:
        raise StateReadError(f"{path}: unreadable ({exc})") from None
    try:
        return DriverState(
            networks=dict(raw.get("networks", {})),
            reservations=dict(raw.get("reservations", {})),
            endpoints={k: EndpointState(**v) for k, v in raw.get("endpoints", {}).items()})
    except (TypeError, AttributeError) as exc:
        raise StateReadError(f"{path}: unexpected content ({exc})") from None
