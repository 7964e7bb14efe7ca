"""The control object: what the control API (and every other front door) asks of the agent.

Owns: `Control`, which implements `agent.api.routes.Control` over fully formed `Components`:
status, members, networks (create, delete), endpoints (the attach operation and its
inverse), keys, the fdb report, `vxmesh leave`, readiness (set by the process once the first
kernel sync is done) and the request to stop (`StopRequest`, from a signal or a leave).

Rules: no translation of errors here: domain errors go up to the front door, which maps them
through `agent.api.errors`; nothing waits on gossip.

May import: agent.*, overlay, underlay, trio, the standard library.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import trio

from agent.api.attach import Attachment, AttachRequest
from agent.api.errors import Conflict, InvalidRequest, NotFound
from agent.api.routes import NetworkCreateRequest
from agent.runtime.attachments import first_ip
from agent.runtime.compose import Components
from agent.runtime.fdb_report import fdb_report
from agent.runtime.ports_report import port_rows
from agent.runtime.wireguard_link import RotationRefused
from agent.store.errors import InvalidNetwork
from agent.store.schema import Network, split_parent, validate_network, validate_policy
from overlay import desired as desired_state
from underlay import links
from underlay.endpoints import Inspection
from underlay.endpoints_model import EndpointNotFound, Mode, PortClaim

log = logging.getLogger("vxmesh.agent")

SHUTDOWN_TIMEOUT = 3.0
LEAVE_ANSWER_TIME = 0.2  # after `vxmesh leave`: time for the API to send its answer


@dataclass(frozen=True)
class StopRequest:
    """Why the process is to end; `leave`: leave the cluster first; `left`: already did;
    `delay`: seconds to wait before stopping (an answer still on its way)."""

    reason: str
    leave: bool
    left: bool = False
    delay: float = 0.0


def agent_version() -> str:
    try:
        return metadata.version("vxmesh")
    except metadata.PackageNotFoundError:
        return "unknown"


class Control:
    """The running agent as its front doors see it."""

    def __init__(self, components: Components) -> None:
        self.c = components
        self.ready = False
        self._stop_requested = trio.Event()
        self._stop = StopRequest("", leave=False)

    def mark_ready(self) -> None:
        """The first kernel sync is done and every phase started."""
        self.ready = True

    def request_stop(self, stop: StopRequest) -> None:
        """End the process (`agent.runtime.process` does the work); the first request wins."""
        if not self._stop_requested.is_set():
            self._stop = stop
            self._stop_requested.set()

    async def wait_stop_requested(self) -> StopRequest:
        await self._stop_requested.wait()
        return self._stop

    # -- status and members -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        c = self.c
        members = c.gossip.members()
        store = c.store.statistics()
        reconciler = c.reconciler.statistics()
        return {
            "node": c.node,
            "version": agent_version(),
            "ready": self.ready,
            "vtep": c.facts.address,
            "underlay_interface": c.facts.interface,
            "underlay_mtu": c.facts.mtu,
            "gossip_port": c.config.gossip.port,
            "members_alive": sum(1 for m in members if m["state"] == "alive"),
            "members": len(members),
            "members_agent_down": [m["name"] for m in members if m.get("agent_down")],
            "networks": len(c.networks),
            "endpoints": len(c.endpoints.records()),
            "visible_endpoints": len(c.table.endpoints()),
            "in_sync": reconciler.in_sync,
            "pending_kernel_changes": reconciler.pending_updates + reconciler.pending_deletions,
            "store_up": not store.degraded,
            "degraded": store.degraded,
            "store_error": store.last_error if store.degraded else None,
            "store_member": store.member,
            "uptime_seconds": round(time.time() - c.started_at, 1),
            "wireguard": asdict(c.wireguard.statistics()),
            "policy": asdict(c.policies.statistics()),
        }

    def members(self) -> list[dict[str, Any]]:
        return self.c.gossip.members()

    async def leave(self) -> dict[str, Any]:
        """`vxmesh leave`: leave the cluster now (peers withdraw our entries within a second),
        then end the process with exit 0 once this answer is on its way."""
        log.info("vxmesh leave: leaving the cluster")
        with trio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
            scope.shield = True
            await self.c.gossip.leave()
        self.request_stop(StopRequest("vxmesh leave", leave=False, left=True,
                                      delay=LEAVE_ANSWER_TIME))
        return {"node": self.c.node, "left": True, "stopping": True}

    # -- networks ---------------------------------------------------------------------------

    async def networks(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for entry in self.c.table.endpoints():
            counts[entry.network] = counts.get(entry.network, 0) + 1
        joined = self.c.table.networks()
        for record in self.c.endpoints.records():
            if record.mode is not Mode.OVERLAY and record.network:
                counts[record.network] = counts.get(record.network, 0) + 1
        joined = self.c.table.networks()
        return [{"name": n.name, "driver": n.driver, "vni": n.vni, "subnet": str(n.subnet),
                 "subnet6": None if n.subnet6 is None else str(n.subnet6),
                 "subnets": ", ".join(str(s) for s in (n.subnet, n.subnet6) if s is not None),
                 "gateway": str(n.gateway), "ip_range": None if n.ip_range is None
                 else str(n.ip_range), "mtu": self._mtu_of(n), "mode": n.mode,
                 "parent": n.parent, "internal": n.internal, "options": dict(n.options),
                 "endpoints": counts.get(n.name, 0), "joined": n.name in joined}
                for n in self.c.networks.values()]

    def _mtu_of(self, network: Network) -> int:
        """The MTU endpoints get: the network's, else the driver's default on this host."""
        if network.mtu is not None:
            return network.mtu
        if network.driver == "overlay":
            return desired_state.overlay_mtu(self.c.facts.mtu, self.c.facts.address,
                                             encrypted=network.encrypted)
        return self.c.facts.mtu

    async def create_network(self, request: NetworkCreateRequest) -> dict[str, Any]:
        if request.subnet is None:
            raise InvalidRequest("subnet: required (for example 10.10.0.0/16)")
        network = validate_network(
            name=request.name, subnet=request.subnet, vni=request.vni, mtu=request.mtu,
            mode=request.driver, gateway=request.gateway, subnet6=request.subnet6,
            ip_range=request.ip_range, internal=request.internal,
            options=dict(request.options))
        await self._check_on_this_host(network)
        if network.encrypted and self.c.wireguard.support.backend is None:
            raise InvalidRequest("options.encrypted: 'true' needs WireGuard on this host, "
                                 f"missing {self.c.wireguard.support.missing}")
        created = await self.c.store.create_network(network)
        self.c.networks.put(created)
        return created.to_json()

    async def _check_on_this_host(self, network: Network) -> None:
        """What only this host can tell: the kernel has the driver, the parent exists."""
        missing = self.c.endpoints.capabilities.missing
        if network.driver in missing:
            raise InvalidNetwork("driver", network.driver, missing[network.driver])
        if network.driver not in ("macvlan", "ipvlan"):
            return
        parent = network.parent or self.c.facts.interface
        base, vlan = split_parent(parent)
        if vlan is not None and "vlan" in missing:
            raise InvalidNetwork("parent", parent, missing["vlan"])
        if await self.c.netlink.call(lambda ipr: links.get_link(ipr, base)) is None:
            raise InvalidNetwork("parent", parent, f"no interface {base!r} on this host")

    async def delete_network(self, name: str) -> None:
        if any(r.network == name for r in self.c.endpoints.records()):
            raise Conflict(f"network {name!r} has endpoints on this host; delete them first")
        await self.c.store.delete_network(name)
        self.c.networks.discard(name)

    # -- network policies -------------------------------------------------------------------

    async def policies(self) -> list[dict[str, Any]]:
        drops = self.c.policies.statistics().drops
        return [dict(p.to_json(), dropped=drops.get(p.name, 0))
                for p in await self.c.store.list_policies()]

    async def create_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        policy = validate_policy(name=body.get("name"), network=body.get("network"),
                                 direction=body.get("direction", "ingress"),
                                 select=body.get("select"), allow=body.get("allow"),
                                 ports=body.get("ports") or [], log=body.get("log", False))
        created = await self.c.store.create_policy(policy)
        return created.to_json()  # every agent enforces it when its policy watch sees it

    async def delete_policy(self, name: str) -> None:
        await self.c.store.delete_policy(name)

    # -- endpoints --------------------------------------------------------------------------

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint visible here: the table's (overlay, every host) and our local ones."""
        c = self.c
        records = c.endpoints.records()
        local_by_ip = {(r.network, first_ip(r)): r for r in records if r.mode is Mode.OVERLAY}
        rows: list[dict[str, Any]] = []
        for entry in sorted(c.table.endpoints(), key=lambda e: (e.network, e.ip)):
            record = local_by_ip.get((entry.network, entry.ip))
            mine = entry.owner == c.node
            rows.append({"name": record.name if record and mine
                         else entry.attributes.name or None,
                         "aliases": list(entry.attributes.aliases),
                         "network": entry.network, "mode": "overlay", "ip": entry.ip,
                         "mac": entry.mac, "node": entry.owner, "vtep": entry.vtep,
                         "local": mine})
        for record in records:
            if record.mode is not Mode.OVERLAY:
                rows.append({"name": record.name, "network": record.network,
                             "mode": record.mode.value, "ip": first_ip(record),
                             "mac": record.mac, "node": c.node, "vtep": None, "local": True})
        return rows

    def endpoint(self, name: str) -> Attachment:
        return self.c.attachments.get(name)

    def attachments(self) -> list[Attachment]:
        """Every attachment of this host."""
        return self.c.attachments.all()

    async def inspect(self, name: str) -> Inspection:
        """Attachment `name`'s interface as the kernel shows it now."""
        try:
            return await self.c.endpoints.inspect(name)
        except EndpointNotFound:
            raise NotFound(f"no endpoint {name!r} on this host") from None

    async def attach(self, request: AttachRequest) -> Attachment:
        return await self.c.attachments.attach(request)

    async def detach(self, name: str) -> bool:
        return await self.c.attachments.detach(name)

    async def set_aliases(self, name: str, aliases: tuple[str, ...]) -> Attachment:
        return await self.c.attachments.set_aliases(name, aliases)

    # -- keys and fdb -----------------------------------------------------------------------

    def keys(self) -> dict[str, Any]:
        return self.c.gossip.keys_json()

    async def change_key(self, action: str, key: bytes) -> dict[str, Any]:
        self.c.gossip.change_key(action, key)
        return self.c.gossip.keys_json()

    async def rotate_wireguard(self) -> dict[str, Any]:
        """`vxmesh keys rotate-wireguard`: a new WireGuard key pair, old and new overlapping
        (agent.runtime.wireguard_link); answers once the new key is the current one."""
        try:
            return await self.c.wireguard.rotate()
        except RotationRefused as exc:
            raise Conflict(str(exc)) from None

    async def ports(self, claim: PortClaim | None) -> list[dict[str, Any]]:
        """`vxmesh ports`: listening sockets, their processes and Docker containers."""
        return await trio.to_thread.run_sync(port_rows, claim, self.c.container_of_pid)

    async def fdb(self, network: str | None) -> dict[str, Any]:
        kernel = self.c.kernel
        want = self.c.pipeline.desired
        return fdb_report(want, await kernel.dump_links(), await kernel.dump_fdb(),
                          await kernel.dump_neighbors(), network)
