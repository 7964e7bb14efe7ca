"""Endpoints in Docker's networking modes on a real kernel: the API the control API calls.

Owns: creating, deleting, listing, inspecting endpoints and running commands inside them, for
modes none, host, bridge, overlay, macvlan and ipvlan (see `underlay.endpoints_model`), and
the recovery pass at start that garbage-collects what a crashed agent left behind.

Rules:
- Every host-side operation happens in `config.host_netns` (None: the agent's namespace).
- A request is validated, checked against other endpoints, live sockets and the kernel
  before anything changes; a refused request changes nothing. The record is persisted (state
  `creating`) BEFORE the first kernel object exists; a failure after that rolls back what was
  made; a crash is rolled back by `start()` at the next run (records left `creating` or
  `deleting`, namespaces with our prefix and host veths named like ours that no record owns,
  nftables rules re-rendered from the records). A record that parses neither from its file
  nor from its copy keeps its namespace and veth: never collected as an orphan.
- A failed record write (full disk) changes nothing: at the first write nothing exists yet;
  at the last one (state `ready`) the endpoint is rolled back whole.
- A sandbox that is not ours (a caller's `netns_path`, a handed-back veth the caller moved)
  is never created or deleted here; when it is gone at `start()` (the container went away
  while the agent was down), its endpoint is removed.
- Create and delete are idempotent: the same spec again re-ensures the kernel objects and
  returns the record; a different spec under a taken name is refused naming the field;
  deleting an unknown name returns False.
- Published ports and MASQUERADE live in our own `ip <nft_table>` table, replaced whole in
  one transaction (`underlay.nat_table`); other tables are never touched. Nothing removes
  them at a stop, and the overlay egress set last applied is saved with the records, so the
  first transaction of the next run (at `start()`) renders the same overlay isolation: the
  rules are never absent while the agent restarts.
- Kernel work is synchronous (netlink threads, nft); the async methods run it in a worker
  thread, one mutation at a time: create and delete on the host's netlink thread itself (one
  hop; the sandbox side through `underlay.plug`, one batch on a socket of the sandbox).

May import: trio, the standard library, underlay.*.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from pyroute2.iproute import IPRoute

from underlay import links, nft, plug, ports
from underlay.endpoints_model import (
    HOST_VETH_PATTERN,
    INSIDE_IFNAME,
    BridgeNetwork,
    EndpointConflict,
    EndpointError,
    EndpointNotFound,
    EndpointRecord,
    EndpointsConfig,
    EndpointSpec,
    EndpointSpecError,
    ListeningSocket,
    Mode,
    State,
    claims_overlap,
    endpoint_holding,
    host_veth_name,
    resolve,
    socket_holding,
)
from underlay.endpoints_state import RecordStore
from underlay.errors import KernelError, RecordWriteError, UnderlayError
from underlay.facts import CapabilityReport, probe_capabilities
from underlay.kernel import NetlinkThread
from underlay.nat_table import OverlayEgress, replace_transaction
from underlay.records import split_vlan

log = logging.getLogger(__name__)


def _vlan_base(parent: str) -> str:
    """The interface a parent stands on: `eth0` for `eth0.30` (made on demand) and `eth0`."""
    return split_vlan(parent)[0]

StepHook = Callable[[str, str], None]
ContainerOfPid = Callable[[int], str | None]  # the name of the container a process runs in


@dataclass(frozen=True)
class RecoveryReport:
    """What `start()` found and did."""

    rolled_back: tuple[str, ...]
    orphan_namespaces: tuple[str, ...]
    orphan_links: tuple[str, ...]
    reensured: tuple[str, ...]
    failed: tuple[str, ...]
    unreadable: tuple[str, ...]
    """Records that parse neither from their file nor from its copy: their namespace and
    veth are left alone (never collected as orphans)."""
    restored: tuple[str, ...] = ()
    """Records that did not parse and were restored from their copy."""
    sandbox_gone: tuple[str, ...] = ()
    """Records whose caller-owned sandbox was gone: removed with what was ours."""


@dataclass(frozen=True)
class Inspection:
    """An endpoint as the kernel shows it now (None/empty where the mode has no interface)."""

    record: EndpointRecord
    mac: str | None
    mtu: int | None
    up: bool | None
    addresses: tuple[str, ...]
    ports: tuple[str, ...]


@dataclass(frozen=True)
class ExecResult:
    """A finished command run inside an endpoint."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class EndpointsStatistics:
    """Counters for metrics."""

    endpoints: int
    by_mode: tuple[tuple[str, int], ...]
    created: int
    deleted: int
    failed_creates: int
    refused: int
    orphans_collected: int


class Endpoints:
    """The endpoint service of one host. Call `await start()` before anything else.

    `capabilities` holds `underlay.facts.probe_capabilities` as found by `start()`; macvlan and
    ipvlan requests are refused with its reason when the kernel lacks them.
    """

    def __init__(self, config: EndpointsConfig, *, on_step: StepHook | None = None,
                 container_of_pid: ContainerOfPid | None = None) -> None:
        self.config = config
        self._on_step = on_step
        self._container_of_pid = container_of_pid or (lambda pid: None)
        self._store = RecordStore(config.state_dir)
        self._records: dict[str, EndpointRecord] = {}
        self._host_nl: NetlinkThread | None = None
        self._lock = trio.Lock()
        self._counts: Counter[str] = Counter()
        self._overlays: tuple[OverlayEgress, ...] = ()
        self._sysctls_set: set[tuple[str, str]] = set()
        self.capabilities = CapabilityReport(available=frozenset())

    # --- public API -----------------------------------------------------------------------

    async def start(self) -> RecoveryReport:
        """Load records and garbage-collect what a previous (crashed) run left behind."""
        async with self._lock:
            self.capabilities = await probe_capabilities(self.host_nl)
            self._overlays = _overlays_from(self._store.load_overlays())
            return await trio.to_thread.run_sync(self._recover)

    async def create(self, spec: EndpointSpec) -> EndpointRecord:
        """Create endpoint `spec.name` (or re-ensure the same spec) and return its record.
        The whole create runs on the host's netlink thread (one hop, its netlink calls in
        place) and is never abandoned half-way by a cancellation."""
        async with self._lock:
            with trio.CancelScope(shield=True):
                record = await self.host_nl.call(lambda ipr: self._create(spec))
            return record

    async def set_overlay_egress(self, overlays: tuple[OverlayEgress, ...]) -> None:
        """The overlay networks this host has endpoints in: their way out through NAT here
        (unless internal) and their isolation, in our table (replaced when they change)."""
        async with self._lock:
            if overlays != self._overlays:
                previous, self._overlays = self._overlays, overlays
                try:
                    await trio.to_thread.run_sync(self._apply_nat)
                except BaseException:
                    self._overlays = previous
                    raise
                try:  # the kernel holds the new set; a restart before the next write
                    # renders the previous one until the agent re-applies its own
                    self._store.save_overlays([dataclasses.asdict(o) for o in overlays])
                except RecordWriteError as exc:
                    log.warning("overlay egress applied but not saved: %s", exc)

    def overlay_egress(self) -> tuple[OverlayEgress, ...]:
        """The overlay egress set in force (from the previous run until the first change)."""
        return self._overlays

    async def set_aliases(self, name: str, aliases: tuple[str, ...]) -> EndpointRecord:
        """Record new aliases for endpoint `name` (its kernel objects are not touched)."""
        async with self._lock:
            record = self.get(name)
            changed = dataclasses.replace(
                record, spec=dataclasses.replace(record.spec, aliases=aliases))
            await trio.to_thread.run_sync(partial(
                self._store.save, changed, durable=_outlives_reboot(changed)))
            self._records[name] = changed
            return changed

    async def delete(self, name: str) -> bool:
        """Delete endpoint `name` with all its kernel objects; False if it did not exist."""
        async with self._lock:
            with trio.CancelScope(shield=True):
                deleted = await self.host_nl.call(lambda ipr: self._delete(name))
            return deleted

    def records(self) -> list[EndpointRecord]:
        """Every endpoint, by name."""
        return [self._records[name] for name in sorted(self._records)]

    def get(self, name: str) -> EndpointRecord:
        """The record of endpoint `name`, or EndpointNotFound."""
        try:
            return self._records[name]
        except KeyError:
            raise EndpointNotFound(f"name={name!r}: no such endpoint") from None

    async def inspect(self, name: str) -> Inspection:
        """The endpoint's record with its live MAC, MTU, state and addresses."""
        record = self.get(name)
        return await trio.to_thread.run_sync(self._inspect, record)

    def exec_argv(self, name: str, argv: list[str]) -> list[str]:
        """The command line that runs `argv` inside endpoint `name` (for long-lived processes)."""
        record = self.get(name)
        if record.handed_back is not None:
            raise EndpointError(f"endpoint {name!r}: its interface was handed to its runtime; "
                                "run commands through the runtime")
        return nft.in_netns(record.netns or record.sandbox or self.config.host_netns, argv)

    async def exec(self, name: str, argv: list[str], *, timeout: float = 30) -> ExecResult:
        """Run `argv` inside endpoint `name` and return its exit status and output."""
        full = self.exec_argv(name, argv)
        with trio.move_on_after(timeout) as scope:
            proc = await trio.run_process(full, capture_stdout=True, capture_stderr=True,
                                          check=False)
        if scope.cancelled_caught:
            raise EndpointError(f"exec in endpoint {name!r}: {argv!r} took over {timeout}s")
        return ExecResult(proc.returncode, proc.stdout.decode(errors="replace"),
                          proc.stderr.decode(errors="replace"))

    def statistics(self) -> EndpointsStatistics:
        by_mode = Counter(record.mode.value for record in self._records.values())
        return EndpointsStatistics(
            endpoints=len(self._records), by_mode=tuple(sorted(by_mode.items())),
            created=self._counts["created"], deleted=self._counts["deleted"],
            failed_creates=self._counts["failed_creates"], refused=self._counts["refused"],
            orphans_collected=self._counts["orphans"])

    def close(self) -> None:
        """Release the netlink thread and the state lock (kernel objects stay)."""
        if self._host_nl is not None:
            self._host_nl.close()
            self._host_nl = None
        self._store.close()

    # --- synchronous core (worker thread) -------------------------------------------------

    @property
    def host_nl(self) -> NetlinkThread:
        if self._host_nl is None:
            self._host_nl = NetlinkThread(self.config.host_netns)
        return self._host_nl

    def _step(self, name: str, step: str) -> None:
        if self._on_step is not None:
            self._on_step(name, step)

    def _create(self, spec: EndpointSpec) -> EndpointRecord:
        existing = self._records.get(spec.name)
        others = [r for r in self._records.values() if r.name != spec.name]
        try:
            record = resolve(spec, self.config, others)
            if existing is not None:
                self._check_same(existing, record)
                self._ensure_kernel(existing)
                return existing
            self._check_ports(record, others)
            self._check_kernel(record)
        except UnderlayError:
            self._counts["refused"] += 1
            raise
        self._store.save(record, durable=_outlives_reboot(record))
        self._records[record.name] = record
        self._step(record.name, "recorded")
        try:
            self._ensure_kernel(record)
        except Exception as exc:
            self._counts["failed_creates"] += 1
            self._rollback(record)
            if isinstance(exc, links.LinkConflict):  # e.g. the sandbox has that ifname
                raise EndpointConflict(f"endpoint {record.name!r}: {exc}") from exc
            if isinstance(exc, UnderlayError):
                raise
            raise KernelError(f"create endpoint {record.name!r}: {exc}") from exc
        ready = dataclasses.replace(record, state=State.READY)
        try:
            self._store.save(ready, durable=_outlives_reboot(ready))
        except RecordWriteError:
            # Not recorded as ready: undo it all, so the caller may release its address.
            self._counts["failed_creates"] += 1
            self._rollback(record)
            raise
        self._records[ready.name] = ready
        self._counts["created"] += 1
        return ready

    def _check_same(self, existing: EndpointRecord, wanted: EndpointRecord) -> None:
        for field in dataclasses.fields(EndpointSpec):
            have = getattr(existing.spec, field.name)
            want = getattr(wanted.spec, field.name)
            if have != want:
                raise EndpointConflict(
                    f"{field.name}={want!r}: endpoint {existing.name!r} exists with "
                    f"{field.name}={have!r}; delete it first")

    def _check_ports(self, record: EndpointRecord, others: list[EndpointRecord]) -> None:
        claims = record.port_claims()
        if not claims:
            return
        sockets: list[ListeningSocket] = ports.listening_sockets(self.config.host_netns)
        for claim in claims:
            holder = endpoint_holding(claim, others, exclude=record.name)
            if holder is not None:
                raise EndpointConflict(
                    f"port {claim} of endpoint {record.name!r} is held by endpoint "
                    f"{holder.name!r} ({holder.mode.value} mode)")
            sock = socket_holding(claim, sockets)
            if sock is not None:
                owners = ports.socket_owners(sock.inode)
                who = ", ".join(self._describe_owner(o) for o in owners) or \
                    f"a socket with inode {sock.inode} (owner not visible)"
                raise EndpointConflict(
                    f"port {claim} of endpoint {record.name!r} is already bound "
                    f"({sock.address}:{sock.port}/{sock.proto}) by {who}")
        # Two claims inside one request must not overlap each other either.
        for index, claim in enumerate(claims):
            for other in claims[index + 1:]:
                if claims_overlap(claim, other):
                    raise EndpointConflict(
                        f"ports {claim} and {other} of endpoint {record.name!r} overlap")

    def _describe_owner(self, owner: ports.SocketOwner) -> str:
        container = self._container_of_pid(owner.pid)
        where = f", container {container}" if container else ""
        return f"pid {owner.pid} ({owner.program}{where})"

    def _check_kernel(self, record: EndpointRecord) -> None:
        if record.netns is not None and links.netns_exists(record.netns):
            raise EndpointConflict(
                f"name={record.name!r}: namespace {record.netns!r} exists and no record owns "
                f"it (not ours, or a leftover: restart the agent to collect it)")
        if record.sandbox is not None and not os.path.exists(record.sandbox):
            raise EndpointSpecError(f"netns_path={record.sandbox!r}: no such namespace")
        mode = record.mode
        if mode is Mode.OVERLAY:
            bridge = record.bridge or ""
            info = self.host_nl.call_blocking(lambda ipr: links.get_link(ipr, bridge))
            if info is None or info.kind != "bridge":
                raise EndpointError(
                    f"bridge={bridge!r}: no such bridge in the host namespace (the overlay "
                    f"network must be set up first)")
        if mode in (Mode.MACVLAN, Mode.IPVLAN):
            parent = record.spec.parent or self.config.underlay_interface
            base = _vlan_base(parent)
            if self.host_nl.call_blocking(lambda ipr: links.get_link(ipr, base)) is None:
                raise EndpointError(f"parent={parent!r}: no interface {base!r} on the host")
            if "vlan" in self.capabilities.missing and split_vlan(parent)[1] is not None:
                raise EndpointError(f"parent={parent!r}: {self.capabilities.missing['vlan']}")
        if mode in (Mode.MACVLAN, Mode.IPVLAN) and mode.value in self.capabilities.missing:
            raise EndpointError(f"mode={mode.value!r}: {self.capabilities.missing[mode.value]}")

    def _ensure_kernel(self, record: EndpointRecord) -> None:
        mode = record.mode
        if mode is Mode.HOST:
            return
        if record.netns is not None:
            links.create_netns(record.netns)
            self._step(record.name, "netns")
        if mode is Mode.NONE:
            return
        mtu = record.spec.mtu
        if mode is Mode.BRIDGE:
            net = self.config.bridge_network(record.network, record.spec.bridge_network)
            mtu = mtu or net.mtu
            self._ensure_bridge_network(net)
        if mode is Mode.OVERLAY and record.gateway:  # its host routes what it sends off-link
            self._sysctl_once("net.ipv6.conf.all.forwarding" if ":" in record.gateway
                              else "net.ipv4.ip_forward", "1")
        if mode is Mode.OVERLAY and record.spec.gateway6:
            self._sysctl_once("net.ipv6.conf.all.forwarding", "1")
        if mode is Mode.OVERLAY and mtu is None:  # default: the network's (its bridge's) MTU
            bridge_name = record.bridge or ""
            bridge_info = self.host_nl.call_blocking(lambda ipr: links.get_link(ipr, bridge_name))
            mtu = bridge_info.mtu if bridge_info is not None else None
        inside_ns = record.netns or record.sandbox
        ifname = record.ifname or INSIDE_IFNAME
        if mode in (Mode.BRIDGE, Mode.OVERLAY):
            host_ifname, bridge = record.host_ifname or "", record.bridge
            if record.handed_back or inside_ns is None:
                peer = record.handed_back or ifname
                self.host_nl.call_blocking(lambda ipr: links.ensure_veth(
                    ipr, host_ifname, peer, mtu=mtu, peer_mac=record.mac, master=bridge))
            else:
                sandbox_ns = inside_ns
                self.host_nl.call_blocking(lambda ipr: plug.ensure_veth_into(
                    ipr, host_ifname, ifname, sandbox_ns, mtu=mtu, peer_mac=record.mac,
                    master=bridge))
            if mode is Mode.BRIDGE:
                self.host_nl.call_blocking(
                    lambda ipr: links.set_bridge_port(ipr, host_ifname, hairpin=True))
        else:
            parent = record.spec.parent or self.config.underlay_interface
            netns = record.netns
            self._ensure_parent(parent)
            if mode is Mode.MACVLAN:
                self.host_nl.call_blocking(lambda ipr: links.ensure_macvlan(
                    ipr, ifname, parent, netns=netns, mtu=mtu, mac=record.mac))
            else:
                ipvlan_mode = record.spec.ipvlan_mode
                self.host_nl.call_blocking(lambda ipr: links.ensure_ipvlan(
                    ipr, ifname, parent, mode=ipvlan_mode, netns=netns, mtu=mtu))
        self._step(record.name, "link")
        if inside_ns is not None:
            self._configure_inside(record, inside_ns, ifname, mtu)
            self._step(record.name, "addresses")
        if mode is Mode.BRIDGE:
            self._apply_nat()
            self._step(record.name, "nat")

    def _configure_inside(self, record: EndpointRecord, netns: str, ifname: str,
                          mtu: int | None) -> None:
        """MTU, MAC, addresses and default route of the interface inside the sandbox (one
        batch on a netlink socket of the sandbox), then the wait until it carries traffic."""
        gateway6 = record.spec.gateway6
        if record.mode is Mode.BRIDGE:
            bridge6 = self.config.bridge_network(record.network,
                                                 record.spec.bridge_network).gateway6
            gateway6 = None if bridge6 is None else str(bridge6.ip)
        routes = []
        if record.gateway:
            routes.append(("::/0" if ":" in record.gateway else "0.0.0.0/0", record.gateway))
        if gateway6 is not None:
            routes.append(("::/0", gateway6))
        with plug.Sandbox(netns, ifname) as inside:
            inside.configure(mtu=mtu, mac=record.mac, addresses=record.addresses,
                             routes=routes)
            # Hand back an endpoint that carries traffic: wait (bounded) for the link watcher.
            ready = inside.wait_operational()
        if ready and record.host_ifname is not None:
            host_ifname = record.host_ifname
            ready = self.host_nl.call_blocking(
                lambda ipr: links.wait_operational(ipr, host_ifname))
        if not ready:
            log.warning("endpoint %r: link not operational after 10 s (busy kernel?)",
                        record.name)

    def _ensure_parent(self, parent: str) -> None:
        """`eth0.30`: the 802.1Q sub-interface of eth0 with id 30, made if missing (as Docker's
        macvlan driver; removed with the last endpoint on it, `_remove_unused_parent`)."""
        base, vlan = split_vlan(parent)
        if vlan is not None:
            made = self.host_nl.call_blocking(
                lambda ipr: links.ensure_vlan(ipr, parent, base, vlan))
            if made:
                log.info("made VLAN sub-interface %s (id %d on %s)", parent, vlan, base)

    def _remove_unused_parent(self, record: EndpointRecord) -> None:
        """Remove a VLAN sub-interface we made once no other endpoint stands on it."""
        parent = record.spec.parent or self.config.underlay_interface
        if split_vlan(parent)[1] is None or any(
                r.name != record.name and r.mode in (Mode.MACVLAN, Mode.IPVLAN)
                and (r.spec.parent or self.config.underlay_interface) == parent
                for r in self._records.values()):
            return
        if self.host_nl.call_blocking(lambda ipr: links.owned_by_us(ipr, parent)):
            self.host_nl.call_blocking(lambda ipr: links.delete_link(ipr, parent))
            log.info("removed VLAN sub-interface %s (no endpoint on it)", parent)

    def _ensure_bridge_network(self, net: BridgeNetwork) -> None:
        gateway = str(net.gateway)

        gateway6 = net.gateway6

        def ensure(ipr: IPRoute) -> None:
            links.ensure_bridge(ipr, net.ifname, mtu=net.mtu)
            links.add_address(ipr, net.ifname, gateway)
            if gateway6 is not None:
                links.add_address(ipr, net.ifname, str(gateway6))

        self.host_nl.call_blocking(ensure)
        self._sysctl("net.ipv4.ip_forward", "1")
        if gateway6 is not None:
            self._sysctl_once("net.ipv6.conf.all.forwarding", "1")
        # DNAT from the host's 127.0.0.0/8 to an endpoint (as Docker without userland proxy).
        self._sysctl(f"net.ipv4.conf.{net.ifname}.route_localnet", "1")

    def _sysctl_once(self, key: str, value: str) -> None:
        """`_sysctl`, skipped when this service set the same value already."""
        if (key, value) not in self._sysctls_set:
            self._sysctl(key, value)
            self._sysctls_set.add((key, value))

    def _sysctl(self, key: str, value: str) -> None:
        argv = nft.in_netns(self.config.host_netns, ["sysctl", "-qw", f"{key}={value}"])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise KernelError(f"sysctl {key}={value}: {proc.stderr.strip()}")

    def _apply_nat(self, *, without: str | None = None) -> None:
        live = [r for r in self._records.values() if r.name != without]
        script = replace_transaction(self.config.nft_table, self._bridge_networks(live), live,
                                     self._overlays)
        nft.apply_script(self.config.host_netns, script)

    def _bridge_networks(self, records: list[EndpointRecord]) -> tuple[BridgeNetwork, ...]:
        """The configured bridge networks, then the vxmesh bridge networks records use."""
        own = {r.spec.bridge_network.name: r.spec.bridge_network for r in records
               if r.spec.bridge_network is not None}
        return self.config.bridges + tuple(net for _, net in sorted(own.items()))

    def _remove_unused_bridge(self, record: EndpointRecord) -> None:
        """A vxmesh bridge network's bridge goes with its last endpoint on this host (an
        endpoint of a configured bridge network on the same kernel bridge keeps it)."""
        net = record.spec.bridge_network
        if net is None or any(r.name != record.name and r.mode is Mode.BRIDGE
                              and r.bridge == net.ifname for r in self._records.values()):
            return
        self.host_nl.call_blocking(lambda ipr: links.delete_link(ipr, net.ifname))

    def _remove_kernel(self, record: EndpointRecord) -> None:
        """Remove every kernel object of `record` that exists (each step tolerates absence)."""
        if record.host_ifname is not None:
            host_ifname = record.host_ifname
            self.host_nl.call_blocking(lambda ipr: links.delete_link(ipr, host_ifname))
        if record.netns is not None:
            links.delete_netns(record.netns)
        if record.mode is Mode.BRIDGE:
            self._apply_nat(without=record.name)
            self._remove_unused_bridge(record)
        if record.mode in (Mode.MACVLAN, Mode.IPVLAN):
            self._remove_unused_parent(record)

    def _rollback(self, record: EndpointRecord) -> None:
        try:
            self._remove_kernel(record)
        except Exception:
            log.exception("rollback of endpoint %r failed; the next start collects it",
                          record.name)
            return
        self._records.pop(record.name, None)
        self._store.remove(record.name, durable=_outlives_reboot(record))

    def _delete(self, name: str) -> bool:
        record = self._records.get(name)
        if record is None:
            return False
        deleting = dataclasses.replace(record, state=State.DELETING)
        self._store.save(deleting, durable=_outlives_reboot(deleting))
        self._records[name] = deleting
        self._remove_kernel(deleting)
        self._records.pop(name, None)
        self._store.remove(name, durable=_outlives_reboot(deleting))
        self._counts["deleted"] += 1
        return True

    def _recover(self) -> RecoveryReport:
        records, restored, unreadable = self._store.load()
        for name in restored:
            log.warning("endpoint record %r did not parse; restored from its copy", name)
        for name in unreadable:
            log.error("endpoint record %r is unreadable (set aside as .bad); its namespace and"
                      " veth are kept", name)
        self._records = {r.name: r for r in records}
        rolled_back, reensured, failed, sandbox_gone = [], [], [], []
        for record in records:
            if record.state is not State.READY:
                self._rollback(record)
                rolled_back.append(record.name)
            elif self._sandbox_gone(record):
                self._rollback(record)
                sandbox_gone.append(record.name)
        owned_netns = {r.netns for r in self._records.values() if r.netns}
        owned_netns |= {f"{self.config.netns_prefix}{name}" for name in unreadable}
        orphan_netns = [ns for ns in links.list_netns(prefix=self.config.netns_prefix)
                        if ns not in owned_netns]
        for ns in orphan_netns:
            links.delete_netns(ns)
        owned_links = {r.host_ifname for r in self._records.values() if r.host_ifname}
        owned_links |= {host_veth_name(name) for name in unreadable}

        def collect(ipr: IPRoute) -> list[str]:
            gone = []
            for info in links.list_links(ipr, prefix="vxep"):
                if HOST_VETH_PATTERN.match(info.name) and info.kind == "veth" \
                        and info.name not in owned_links:
                    links.delete_link(ipr, info.name)
                    gone.append(info.name)
            return gone

        orphan_links = self.host_nl.call_blocking(collect)
        self._counts["orphans"] += len(rolled_back) + len(orphan_netns) + len(orphan_links) \
            + len(sandbox_gone)
        for record in list(self._records.values()):
            try:
                self._ensure_kernel(record)
                reensured.append(record.name)
            except UnderlayError:
                log.exception("endpoint %r could not be re-ensured at start", record.name)
                failed.append(record.name)
        self._apply_nat()
        return RecoveryReport(tuple(rolled_back), tuple(orphan_netns), tuple(orphan_links),
                              tuple(reensured), tuple(failed), tuple(unreadable),
                              tuple(restored), tuple(sandbox_gone))

    def _sandbox_gone(self, record: EndpointRecord) -> bool:
        """True when the caller's sandbox of `record` no longer exists (nothing to re-ensure)."""
        if record.sandbox is not None:
            return not os.path.exists(record.sandbox)
        if record.handed_back is not None and record.host_ifname is not None:
            host_ifname = record.host_ifname  # the pair dies with the sandbox it was moved to
            return self.host_nl.call_blocking(lambda ipr: links.get_link(ipr, host_ifname)) \
                is None
        return False

    def _inspect(self, record: EndpointRecord) -> Inspection:
        port_texts = tuple(str(c) for c in record.spec.claims) + \
            tuple(str(m) for m in record.spec.publish)
        if record.mode is Mode.HOST:  # the host's own addresses
            def host_addresses(ipr: IPRoute) -> list[str]:
                return [str(a.interface) for link in links.list_links(ipr) if link.name != "lo"
                        for a in links.list_addresses(ipr, link.name)]

            addresses = self.host_nl.call_blocking(host_addresses)
            return Inspection(record, None, None, None, tuple(addresses), port_texts)
        inside_ns = record.netns or record.sandbox
        if inside_ns is None:  # handed back: the interface is in the runtime's sandbox
            return Inspection(record, None, None, None, (), port_texts)
        inside = NetlinkThread(inside_ns)
        try:
            def read(ipr: IPRoute) -> tuple[links.LinkInfo | None, list[str]]:
                info = links.get_link(ipr, record.ifname or "lo")
                if info is None:
                    return None, []
                return info, [str(a.interface)
                              for a in links.list_addresses(ipr, record.ifname or "lo")]

            info, addresses = inside.call_blocking(read)
        finally:
            inside.close()
        if info is None:
            return Inspection(record, None, None, None, (), port_texts)
        return Inspection(record, info.mac, info.mtu, info.up, tuple(addresses), port_texts)


def _outlives_reboot(record: EndpointRecord) -> bool:
    """Whether `record` must survive a reboot (its namespace is ours, re-made from it) and so
    be fsynced; a caller's sandbox dies with the machine (`underlay.endpoints_state`)."""
    return record.sandbox is None and record.handed_back is None


def _overlays_from(saved: list[dict[str, Any]]) -> tuple[OverlayEgress, ...]:
    """The saved overlay egress set (entries that do not fit are left out, logged)."""
    overlays = []
    for data in saved:
        try:
            overlays.append(OverlayEgress(**data))
        except TypeError:
            log.warning("overlay egress entry %r does not fit; left out until the agent "
                        "applies its own", data)
    return tuple(overlays)
