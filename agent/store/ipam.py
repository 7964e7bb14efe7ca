"""IPAM arithmetic and a host's blocks: pure, no I/O.

Owns the address math of vxmesh's Calico-style IPAM: a network's subnet is carved into blocks
of `network.block_prefix`; a host claims whole blocks through etcd (agent.store.service does the
transaction) and then hands out addresses from its own blocks locally, without a round trip,
which is what lets endpoints be created while etcd is away. Rules:
- the network address, the gateway and (IPv4) the broadcast address are never handed out;
- with an ip_range (Docker's --ip-range) automatic addresses come only from that range, and
  only blocks overlapping it are claimed; a chosen address may be anywhere in the subnet;
- an address belongs to exactly one block and a block to exactly one host;
- every local change bumps the block's generation; the store flushes the newest generation of
  each dirty block with a compare on the block's last known mod revision.
- a chosen address (`check_chosen`) is allocated locally when a held block contains it;
  otherwise the store claims its block, or records it in another host's block
  (`record_in_block`) with a compare on that block's mod revision. So a block's record in etcd
  may gain or lose entries its holder did not write: when the holder re-reads it (`adopt`), etcd
  wins except for the holder's own changes not flushed yet, and an unflushed local allocation of
  an address another host recorded first is given up (`adopt` returns its handle).
Imports: stdlib, agent.store.schema, agent.store.errors (listed among the pure cores).
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from agent.store.errors import (
    AddressExhausted,
    AddressNotAllocated,
    AddressTaken,
    InvalidAddress,
)
from agent.store.schema import Block, IPAddress, IPNetwork, Network


def reserved_addresses(network: Network) -> frozenset[IPAddress]:
    """Addresses of the subnet that are never handed out."""
    reserved: set[IPAddress] = {network.subnet.network_address, network.gateway}
    if network.subnet.version == 4:
        reserved.add(network.subnet.broadcast_address)
    return frozenset(reserved)


def check_chosen(network: Network, value: str | IPAddress, field: str = "ip") -> IPAddress:
    """`value` as an address that may be handed out in `network`, or `InvalidAddress`."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidAddress(field, str(value), "not an IP address") from None
    if address.version != network.subnet.version or address not in network.subnet:
        raise InvalidAddress(
            field, str(address), f"outside network {network.name}'s subnet {network.subnet}"
        )
    if address == network.gateway:
        raise InvalidAddress(field, str(address), f"the gateway of network {network.name}")
    if address == network.subnet.network_address:
        raise InvalidAddress(field, str(address), f"the network address of {network.subnet}")
    if network.subnet.version == 4 and address == network.subnet.broadcast_address:
        raise InvalidAddress(field, str(address), f"the broadcast address of {network.subnet}")
    return address


def record_in_block(block: Block, address: IPAddress, handle: str) -> Block:
    """`block` with `address` allocated to `handle`; `AddressTaken` names a current holder."""
    if address not in block.cidr:
        raise ValueError(f"{address} is not in block {block.cidr}")
    holder = block.allocations.get(address)
    if holder is not None and holder != handle:
        raise AddressTaken(address, holder)
    return Block(block.network, block.cidr, block.host, {**block.allocations, address: handle})


def block_of(network: Network, address: IPAddress) -> IPNetwork:
    """The block of `network` that contains `address`."""
    if address not in network.subnet:
        raise ValueError(f"{address} is not in {network.subnet}")
    return ipaddress.ip_network(f"{address}/{network.block_prefix}", strict=False)


def iter_blocks(network: Network) -> Iterator[IPNetwork]:
    """Every block of the network's subnet, lowest first (lazily: IPv6 has very many); with
    an ip_range, only the blocks that overlap it."""
    blocks = network.subnet.subnets(new_prefix=network.block_prefix)
    ip_range = network.ip_range
    if ip_range is None:
        return blocks
    return (b for b in blocks if b.overlaps(ip_range))


def in_ip_range(network: Network, address: IPAddress) -> bool:
    """Whether automatic allocation may hand out `address` (Docker's --ip-range)."""
    return network.ip_range is None or address in network.ip_range


def usable_in_block(network: Network, cidr: IPNetwork) -> int:
    reserved = reserved_addresses(network)
    return cidr.num_addresses - sum(1 for a in reserved if a in cidr)


def choose_free_block(
    network: Network, taken: Collection[IPNetwork], rng: random.Random, spread: int = 4
) -> IPNetwork:
    """A block nobody holds: one of the first `spread` free ones, picked with `rng`.

    Picking among a few (rather than always the first) keeps hosts that claim at the same time
    from all racing for the same block. Raises `AddressExhausted` when every block is taken.
    """
    candidates: list[IPNetwork] = []
    for cidr in iter_blocks(network):
        if cidr in taken or usable_in_block(network, cidr) == 0:
            continue
        candidates.append(cidr)
        if len(candidates) >= spread:
            break
    if not candidates:
        raise AddressExhausted(f"network {network.name}: every block of {network.subnet} is held")
    return rng.choice(candidates)


@dataclass(frozen=True)
class Unflushed:
    """A local change of one address not in etcd yet: its generation, the handle now holding
    it ("" once released) and the handles released from it since the last flush."""

    generation: int
    handle: str
    released: frozenset[str] = frozenset()


@dataclass
class HeldBlock:
    """One block this host holds, with its local allocations and flush bookkeeping."""

    cidr: IPNetwork
    allocations: dict[IPAddress, str]
    mod_revision: int
    generation: int = 0
    flushed_generation: int = 0
    next_offset: int = 0
    unflushed: dict[IPAddress, Unflushed] = field(default_factory=dict)
    """Addresses allocated or released here and not flushed yet."""

    @property
    def dirty(self) -> bool:
        return self.generation != self.flushed_generation


@dataclass(frozen=True)
class PendingFlush:
    """A block's state to write, with the revision etcd must still hold for it."""

    block: Block
    expected_mod_revision: int
    generation: int


@dataclass
class HostBlocks:
    """The blocks one host holds in one network, and the addresses it handed out from them."""

    network: Network
    host: str
    blocks: dict[IPNetwork, HeldBlock] = field(default_factory=dict)
    handles: dict[str, IPAddress] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reserved = reserved_addresses(self.network)
        self._order: list[int] = []  # held blocks by network address, lowest first
        self._first_open = 0  # no block before this index in _order has room

    # -- what etcd says ----------------------------------------------------------------------

    def adopt(self, block: Block, mod_revision: int) -> list[str]:
        """Take a block record read from etcd as ours (at start, after a claim, on a re-read).

        Returns the handles whose unflushed local address another host recorded first (they
        lost it; normally none).
        """
        if block.host != self.host or block.network != self.network.name:
            raise ValueError(f"block {block.cidr} belongs to {block.host}/{block.network}")
        held = self.blocks.get(block.cidr)
        if held is None:
            self.blocks[block.cidr] = HeldBlock(block.cidr, dict(block.allocations), mod_revision)
            for address, handle in block.allocations.items():
                self.handles[handle] = address
            index = bisect.bisect(self._order, int(block.cidr.network_address))
            self._order.insert(index, int(block.cidr.network_address))
            self._first_open = min(self._first_open, index)
            return []
        # We already hold it. etcd is the truth (another host may have recorded or released a
        # chosen address in it) except for our own changes not flushed yet.
        held.mod_revision = mod_revision
        merged = dict(block.allocations)
        lost: list[str] = []
        for address, change in held.unflushed.items():
            stored = merged.get(address)
            ours = stored is None or stored == change.handle or stored in change.released
            if change.handle and ours:  # we allocated it locally
                merged[address] = change.handle
            elif change.handle:
                lost.append(change.handle)  # another host recorded it first: theirs
            elif stored in change.released:  # we released it locally
                del merged[address]
        if merged != held.allocations:
            for handle in held.allocations.values():
                mine = self.handles.get(handle)
                if mine is not None and mine in held.cidr:
                    del self.handles[handle]
            held.allocations = merged
            for address, handle in merged.items():
                self.handles[handle] = address
            held.generation += 1  # the merged map must be written back (compared on revision)
            index = bisect.bisect_left(self._order, int(block.cidr.network_address))
            self._first_open = min(self._first_open, index)
        for handle in lost:
            held.unflushed = {a: c for a, c in held.unflushed.items() if c.handle != handle}
        if not held.unflushed:
            held.flushed_generation = held.generation  # etcd holds exactly this map
        return lost

    def repair(self, cidr: IPNetwork, mod_revision: int) -> None:
        """etcd holds an unreadable value for our block: keep our copy and write it back
        (compared on the unreadable value's revision) at the next flush."""
        held = self.blocks[cidr]
        held.mod_revision = mod_revision
        held.generation += 1

    def drop(self, cidr: IPNetwork) -> list[str]:
        """Forget a block etcd says is no longer ours; returns the handles that lost addresses."""
        held = self.blocks.pop(cidr, None)
        if held is None:
            return []
        self._order.remove(int(cidr.network_address))
        self._first_open = 0
        lost = list(held.allocations.values())
        for handle in lost:
            self.handles.pop(handle, None)
        return lost

    # -- local allocation --------------------------------------------------------------------

    def allocate(self, handle: str) -> IPAddress | None:
        """An address for `handle` from our blocks (the same one again for a known handle).

        None when every held block is full: the caller must claim a block first.
        """
        known = self.handles.get(handle)
        if known is not None:
            return known
        prefix = self.network.block_prefix
        for index in range(self._first_open, len(self._order)):
            cidr = ipaddress.ip_network((self._order[index], prefix))
            held = self.blocks[cidr]
            address = self._free_in(held)
            if address is not None:
                self._first_open = index
                self._record(held, address, handle)
                return address
        self._first_open = len(self._order)
        return None

    def allocate_chosen(self, handle: str, address: IPAddress) -> IPAddress | None:
        """`address` for `handle` if a held block contains it (check it with `check_chosen`).

        None when no held block contains it (the store must claim or record it in etcd);
        `AddressTaken` when it is allocated, or `handle` already holds another address.
        """
        known = self.handles.get(handle)
        if known is not None and known != address:
            raise InvalidAddress("ip", str(address), f"{handle} already holds {known}")
        for held in self.blocks.values():
            if address in held.cidr:
                holder = held.allocations.get(address)
                if holder is not None and holder != handle:
                    raise AddressTaken(address, holder)
                if holder is None:
                    self._record(held, address, handle)
                return address
        return None

    def holder_of(self, address: IPAddress) -> str | None:
        for held in self.blocks.values():
            if address in held.cidr:
                return held.allocations.get(address)
        return None

    def _record(self, held: HeldBlock, address: IPAddress, handle: str) -> None:
        held.allocations[address] = handle
        held.generation += 1
        self._note_change(held, address, handle, frozenset())
        self.handles[handle] = address

    @staticmethod
    def _note_change(
        held: HeldBlock, address: IPAddress, handle: str, released: frozenset[str]
    ) -> None:
        before = held.unflushed.get(address)
        earlier = before.released if before is not None else frozenset()
        held.unflushed[address] = Unflushed(held.generation, handle, earlier | released)

    def _free_in(self, held: HeldBlock) -> IPAddress | None:
        size = held.cidr.num_addresses
        reserved_here = sum(1 for a in self._reserved if a in held.cidr)
        if len(held.allocations) + reserved_here >= size:
            return None
        base = held.cidr.network_address
        for step in range(size):
            offset = (held.next_offset + step) % size
            address = base + offset
            if address not in held.allocations and address not in self._reserved \
                    and in_ip_range(self.network, address):
                held.next_offset = (offset + 1) % size
                return address
        return None

    def release(self, address: IPAddress) -> str:
        """Give `address` back; returns the handle that held it."""
        for held in self.blocks.values():
            if address in held.cidr:
                handle = held.allocations.pop(address, None)
                if handle is None:
                    break
                held.generation += 1
                self._note_change(held, address, "", frozenset({handle}))
                self.handles.pop(handle, None)
                index = bisect.bisect_left(self._order, int(held.cidr.network_address))
                self._first_open = min(self._first_open, index)
                return handle
        raise AddressNotAllocated(
            f"{address} is not allocated by {self.host} in {self.network.name}"
        )

    def free_count(self) -> int:
        total = 0
        for held in self.blocks.values():
            reserved_here = sum(1 for a in self._reserved if a in held.cidr)
            total += held.cidr.num_addresses - reserved_here - len(held.allocations)
        return total

    def allocated_count(self) -> int:
        return len(self.handles)

    # -- flush bookkeeping -------------------------------------------------------------------

    def pending_flushes(self) -> list[PendingFlush]:
        return [
            PendingFlush(
                Block(self.network.name, held.cidr, self.host, dict(held.allocations)),
                held.mod_revision,
                held.generation,
            )
            for held in self.blocks.values()
            if held.dirty
        ]

    def flushed(self, flushes: Collection[PendingFlush], revision: int) -> None:
        """etcd committed `flushes` at `revision`."""
        for flush in flushes:
            held = self.blocks.get(flush.block.cidr)
            if held is None:
                continue
            held.mod_revision = revision
            held.flushed_generation = max(held.flushed_generation, flush.generation)
            held.unflushed = {
                a: c for a, c in held.unflushed.items() if c.generation > flush.generation
            }


@dataclass
class DepartureClock:
    """Which block-holding hosts have been gone for longer than `grace` seconds.

    Fed periodically with the hosts that hold blocks, the hosts in the node registry and the
    hosts alive in gossip; a host absent from the registry AND not alive in gossip at every
    observation since `grace` seconds ago has left for good (a reboot, an etcd outage or a
    lost lease of a host that still gossips resets the clock).
    """

    grace: float
    absent_since: dict[str, float] = field(default_factory=dict)

    def observe(
        self,
        holders: Collection[str],
        registered: Collection[str],
        now: float,
        alive: Collection[str] = (),
    ) -> list[str]:
        """Record an observation; return the hosts whose blocks may be reclaimed now."""
        absent = {host for host in holders if host not in registered and host not in alive}
        self.absent_since = {h: self.absent_since.get(h, now) for h in absent}
        return sorted(h for h, since in self.absent_since.items() if now - since >= self.grace)

    def forget(self, host: str) -> None:
        self.absent_since.pop(host, None)
