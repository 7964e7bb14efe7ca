"""An in-memory kernel for reconciler unit tests, with failure injection.

It follows the real kernel's rules that matter to the reconciler: a unicast FDB replace
overwrites the entry's single remote, the all-zero MAC takes one remote per append, deleting a
device takes its FDB and neighbor entries with it, a VNI+port pair belongs to one vxlan
device, and (as `underlay.netlink_ops.send_writes` reports it) a delete of something already
gone succeeds.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from underlay.errors import KernelError
from underlay.records import (
    NTF_SELF,
    NUD_PERMANENT,
    ZERO_MAC,
    FdbRecord,
    FdbWrite,
    LinkRecord,
    NeighborRecord,
    NeighborWrite,
    VxlanAttributes,
    VxlanSpec,
    Write,
    WriteAction,
)


@dataclass
class Injection:
    """Fail writes matching `match` with `code`, `times` times (None: forever)."""

    match: Callable[[Write], bool]
    code: int
    times: int | None = 1


@dataclass
class FakeKernel:
    links: dict[int, LinkRecord] = field(default_factory=dict)
    # (ifindex, mac, dst) -> (state, flags)
    fdb: dict[tuple[int, str, str | None], tuple[int, int]] = field(default_factory=dict)
    # (ifindex, ip) -> (mac, state, flags)
    neighbors: dict[tuple[int, str], tuple[str | None, int, int]] = field(default_factory=dict)
    injections: list[Injection] = field(default_factory=list)
    interrupted_dumps: int = 0
    fail_create: dict[str, int] = field(default_factory=dict)
    writes_seen: list[Write] = field(default_factory=list)
    link_calls: list[str] = field(default_factory=list)
    next_index: int = 10

    # -- helpers for tests ------------------------------------------------------------------

    def add_link(self, name: str, kind: str | None, *, vxlan: VxlanAttributes | None = None,
                 mtu: int = 1500, mac: str = "02:00:00:00:00:01",
                 master: int | None = None) -> int:
        index = self.next_index
        self.next_index += 1
        self.links[index] = LinkRecord(index, name, kind, master, mtu, True, mac, vxlan)
        return index

    def index(self, name: str) -> int:
        return next(i for i, link in self.links.items() if link.name == name)

    def link(self, name: str) -> LinkRecord | None:
        return next((link for link in self.links.values() if link.name == name), None)

    def fdb_of(self, name: str) -> dict[tuple[str, str | None], tuple[int, int]]:
        index = self.index(name)
        return {(mac, dst): v for (i, mac, dst), v in self.fdb.items() if i == index}

    def neighbors_of(self, name: str) -> dict[str, tuple[str | None, int, int]]:
        index = self.index(name)
        return {ip: v for (i, ip), v in self.neighbors.items() if i == index}

    # -- KernelPort ---------------------------------------------------------------------------

    def _dump_check(self) -> None:
        if self.interrupted_dumps > 0:
            self.interrupted_dumps -= 1
            raise KernelError("netlink dump kept being interrupted", errno.EINTR)

    async def dump_links(self) -> list[LinkRecord]:
        self._dump_check()
        return list(self.links.values())

    async def dump_fdb(self) -> list[FdbRecord]:
        self._dump_check()
        return [FdbRecord(i, mac, dst, state, flags)
                for (i, mac, dst), (state, flags) in self.fdb.items()]

    async def dump_neighbors(self) -> list[NeighborRecord]:
        self._dump_check()
        return [NeighborRecord(i, ip, mac, state, flags)
                for (i, ip), (mac, state, flags) in self.neighbors.items()]

    def _injected(self, write: Write) -> int:
        for injection in self.injections:
            if injection.times != 0 and injection.match(write):
                if injection.times is not None:
                    injection.times -= 1
                return injection.code
        return 0

    def _write(self, write: Write) -> int:
        if write.ifindex not in self.links:
            return 0 if write.action is WriteAction.DELETE else errno.ENODEV
        if isinstance(write, FdbWrite):
            if write.action is WriteAction.DELETE:
                for key in [k for k in self.fdb if k[0] == write.ifindex and k[1] == write.mac
                            and (write.mac != ZERO_MAC or k[2] == write.dst)]:
                    del self.fdb[key]
                return 0
            if write.mac != ZERO_MAC:
                for key in [k for k in self.fdb if k[0] == write.ifindex and k[1] == write.mac]:
                    del self.fdb[key]
            self.fdb[(write.ifindex, write.mac, write.dst)] = (NUD_PERMANENT, NTF_SELF)
            return 0
        assert isinstance(write, NeighborWrite)
        if write.action is WriteAction.DELETE:
            self.neighbors.pop((write.ifindex, write.ip), None)
            return 0
        self.neighbors[(write.ifindex, write.ip)] = (write.mac, NUD_PERMANENT, 0)
        return 0

    async def send_writes(self, writes: list[Write]) -> list[int]:
        results = []
        for write in writes:
            self.writes_seen.append(write)
            code = self._injected(write)
            if code == errno.ENOENT and write.action is WriteAction.DELETE:
                code = 0  # as send_writes reports it
            results.append(code if code else self._write(write))
        return results

    async def ensure_bridge(self, name: str, mtu: int, mac: str, *addresses: str) -> int:
        self.link_calls.append(" ".join(("ensure_bridge", name, *addresses)))
        found = self.link(name)
        if found is not None:
            if found.kind != "bridge":
                raise KernelError(f"{name} exists as {found.kind}", errno.EEXIST)
            self.links[found.index] = dataclasses.replace(found, mtu=mtu, mac=mac, up=True)
            return found.index
        return self.add_link(name, "bridge", mtu=mtu, mac=mac)

    async def create_vxlan(self, spec: VxlanSpec) -> int:
        self.link_calls.append(f"create_vxlan {spec.name}")
        if spec.name in self.fail_create:
            raise KernelError(f"cannot create {spec.name}", self.fail_create[spec.name])
        if self.link(spec.name) is not None:
            raise KernelError(f"{spec.name}: file exists", errno.EEXIST)
        for link in self.links.values():
            if link.vxlan and link.vxlan.vni == spec.vni and link.vxlan.port == spec.port:
                raise KernelError("A VXLAN device with the specified VNI already exists",
                                  errno.EEXIST)
        attrs = VxlanAttributes(spec.vni, spec.port, spec.local, spec.learning, spec.proxy,
                                spec.udp_csum)
        return self.add_link(spec.name, "vxlan", vxlan=attrs, mtu=spec.mtu, mac=spec.mac)

    async def tune_vxlan(self, index: int, spec: VxlanSpec) -> None:
        self.link_calls.append(f"tune_vxlan {spec.name}")
        link = self.links[index]
        assert link.vxlan is not None
        self.links[index] = dataclasses.replace(
            link, mtu=spec.mtu, mac=spec.mac,
            vxlan=dataclasses.replace(link.vxlan, learning=spec.learning))

    async def attach(self, name: str, master: str, mtu: int) -> None:
        link = self.link(name)
        bridge = self.link(master)
        if link is None or bridge is None:
            raise KernelError(f"link {name!r} or {master!r} does not exist", errno.ENODEV)
        if link.master != bridge.index or link.mtu != mtu or not link.up:
            self.link_calls.append(f"attach {name}")
            self.links[link.index] = dataclasses.replace(link, master=bridge.index, mtu=mtu,
                                                         up=True)

    async def delete_link(self, index: int) -> None:
        link = self.links.pop(index, None)
        if link is None:
            return
        self.link_calls.append(f"delete {link.name}")
        for key in [k for k in self.fdb if k[0] == index]:
            del self.fdb[key]
        for nkey in [k for k in self.neighbors if k[0] == index]:
            del self.neighbors[nkey]
