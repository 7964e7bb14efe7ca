"""Simulation of the replicated neighbor table on the real SWIM core (`gossip.sim.Simulation`).

Owns: the scenario behind `python -m overlay.sim` and its measurements. Every node runs the real
`gossip.swim.Swim` with a real `TableDelegate` over a real `NeighborTable`; the gossip simulator
provides the seeded fake network (loss, latency, TCP push-pull). Nothing here decides anything
the product does; it only drives and measures.

Scenario (simulated time):
- t = 0: the cluster is formed (as after a completed join) and every table holds the warm state
  (every node's endpoints of its networks, every membership record), as after a push-pull.
- from `warmup_s` for `duration_s`: endpoint changes at `churn` per second cluster-wide (Poisson
  arrivals), each at a random live node: half of them change the MAC of one of its endpoints, the
  others add an endpoint (below E) or delete one (at E or above).
- at a third of the churn window one random node is killed (crash, no leave).
- after the churn, the run settles for `settle_s`; then stale and missing entries are counted.

Measurements: converged_* = from a change at its owner until every live node of that network
holds it (or a newer version of the same key), from the exact merge times; detect_all_s = until
every live node's SWIM declared the killed node failed; withdraw_all_s = until no live node's
view shows any entry of the killed node; stale_entries = visible entries whose owner is dead, or
no longer has them at that version; missing_entries = live entries of live owners that a node of
that network does not hold at the owner's version; bytes_per_node_s = UDP + push-pull bytes over
the churn window per node, and per network (bytes sent by that network's nodes, per node).
The same run without churn (same seed, same kill) is the baseline; with `--unscoped` the same
churn run with the table's gossip unscoped (`DisseminationConfig(scoped=False)`: every record
to every member, as before scoping) is a second baseline.

Scenario `agent-crash` (`--scenario agent-crash`; no churn): every node also runs the real
`overlay.liveness.HostLiveness` through its delegate, and its probes of a VTEP are answered
(after two latencies, each way lost with the run's loss) while that host forwards. At
`warmup_s`, `--agents-killed` of the nodes lose their agent (the SWIM node stops, the host
keeps forwarding) and `--hosts-killed` lose the whole host; the run lasts `--duration`. Every
change of a table's view is watched: agents_withdrawn counts (live node, crashed agent) pairs
whose entries ever left the view (should be 0), false_withdrawals the same for never-killed
owners (should be 0), withdraw_hosts_* the time from the kill until each live node of the
network no longer shows a dead host's entries; at the end agents_kept counts the pairs still
shown and hosts_shown the dead hosts' pairs still shown (should be 0). The same run with the
grace off (`agent_down_grace = 0`, withdrawal on failure) is the baseline.

Usage:
    python -m overlay.sim --nodes N --endpoints-per-node E --churn R --loss P --seed S
        [--duration SECONDS] [--network-size M] [--unscoped] [--json]
    python -m overlay.sim --scenario agent-crash --nodes N --loss P --duration SECONDS
        [--agents-killed F] [--hosts-killed F] [--endpoints-per-node E] [--json]

Imports: gossip, overlay and the standard library; `time` only for the wall-clock figure.
"""

from __future__ import annotations

import argparse
import functools
import gc
import ipaddress
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter

from gossip.config import SwimConfig
from gossip.sim import Simulation
from gossip.swim import Member, MemberFailed, MembershipEvent
from overlay.dissemination import DisseminationConfig, TableDelegate
from overlay.liveness import HostLiveness, LivenessConfig
from overlay.table import EndpointChanged, Entry, Merge, NeighborTable, Record

_VTEP_BASE = ipaddress.ip_address("100.64.0.0")  # simulated VTEPs: never used as addresses
_owner_of = attrgetter("owner")


@dataclass
class TableSimResult:
    """What one run measured (times in simulated seconds; None: never reached)."""

    nodes: int
    endpoints: int  # endpoints per node at the start
    networks: int
    churn: float
    loss: float
    seed: int
    duration_s: float
    changes: int = 0
    converged_p50_s: float | None = None
    converged_p99_s: float | None = None
    converged_max_s: float | None = None
    unconverged: int = 0  # changes some interested node never got
    detect_all_s: float | None = None
    withdraw_all_s: float | None = None
    stale_entries: int = 0
    missing_entries: int = 0
    bytes_per_node_s: float = 0.0
    udp_bytes_per_node_s: float = 0.0
    push_pull_bytes_per_node_s: float = 0.0
    #: network -> bytes its nodes sent over the churn window, per node and second
    network_bytes_per_node_s: dict[str, float] = field(default_factory=dict)
    scoped: bool = True
    decode_errors: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class _Change:
    start: float
    version: int
    waiting: set[int]


class _ObservedTable(NeighborTable):
    """A real NeighborTable that reports each accepted remote record to the run (measurement)."""

    run: _Run
    index: int

    def merge(self, record: Record, now: float, *, relay: bool = False) -> Merge:
        result = NeighborTable.merge(self, record, now, relay=relay)  # (no super() per call)
        if result is Merge.ACCEPTED and isinstance(record, Entry):
            self.run.accepted(self.index, record, now)
        return result


class _Run:
    def __init__(self, nodes: int, endpoints: int, churn: float, loss: float, seed: int,
                 duration_s: float, network_size: int, warmup_s: float, settle_s: float,
                 scoped: bool = True) -> None:
        self.dissemination = DisseminationConfig(scoped=scoped)
        self.rng = random.Random(f"overlay-sim:{seed}")
        self.churn_rng = random.Random(f"overlay-sim:churn:{seed}")
        self.endpoints = endpoints
        self.churn = churn
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.settle_s = settle_s
        size = nodes if network_size <= 0 else network_size
        self.network_count = max(1, math.ceil(nodes / size))
        self.network_of = [f"net{i % self.network_count}" for i in range(nodes)]
        self.members_of: dict[str, list[int]] = {}
        for index, network in enumerate(self.network_of):
            self.members_of.setdefault(network, []).append(index)
        self.tables: list[_ObservedTable] = []
        self.delegates: list[TableDelegate] = []
        self.pending: dict[tuple[str, str, str], list[_Change]] = {}
        self.latencies: list[float] = []
        self.index_of: dict[str, int] = {}
        self.next_ip = [0] * nodes
        self.target = -1
        self.detected: dict[int, float] = {}
        self.result = TableSimResult(nodes, endpoints, self.network_count, churn, loss, seed,
                                     duration_s, scoped=scoped)
        self.sim = Simulation(nodes, seed=seed, config=SwimConfig.lan(), loss=loss,
                              delegate_factory=self._make_delegate)
        self.sim.add_observer(self._observe)

    # -- set-up -----------------------------------------------------------------------------

    def _make_delegate(self, index: int, name: str) -> TableDelegate:
        now = self.sim.now if hasattr(self, "sim") else 0.0  # None yet while it is built
        table = _ObservedTable(name, str(_VTEP_BASE + index))
        table.run, table.index = self, index
        table.join_network(self.network_of[index], now)
        delegate = TableDelegate(table, self.dissemination, now=now,
                                 rng=random.Random(f"overlay-sim:targets:{index}"))
        if index < len(self.tables):
            self.tables[index], self.delegates[index] = table, delegate
        else:
            self.tables.append(table)
            self.delegates.append(delegate)
        self.index_of[name] = index
        return delegate

    def warm_start(self) -> None:
        """Every table gets its networks' endpoints and all memberships (shared objects): the
        first member of each network merges them, the others adopt its records."""
        for index, table in enumerate(self.tables):
            for _ in range(self.endpoints):
                self._add_endpoint(index, 0.0)
            table.records_to_send()
        memberships = [r for t in self.tables for r in t.records() if not isinstance(r, Entry)]
        own = [list(t.endpoints()) for t in self.tables]  # before any table learns its peers'
        for members in self.members_of.values():
            first = self.tables[members[0]]
            for membership in memberships:
                first.merge(membership, 0.0)
            for peer in members[1:]:
                for entry in own[peer]:
                    first.merge(entry, 0.0)
            for index in members[1:]:
                self.tables[index].adopt(first)
        everyone = [(node.index, node.name, node.addr) for node in self.sim.nodes]
        for index, table in enumerate(self.tables):
            member_alive = self.delegates[index].member_alive
            for other, name, addr in everyone:
                if other != index:
                    member_alive(name, addr, 0.0)
            table.records_to_send()
            while table.next_event() is not None:
                pass
        self.pending.clear()

    def _add_endpoint(self, index: int, now: float) -> Entry:
        self.next_ip[index] += 1
        n = self.next_ip[index]
        ip = f"fd00:{index:x}::{n:x}" if n % 2 else f"10.{index >> 8 & 255}.{index & 255}.{n}"
        mac = f"02:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}:" \
              f"{n >> 8 & 255:02x}:{n & 255:02x}"
        return self.tables[index].put_endpoint(self.network_of[index], ip, mac, now)

    # -- driving ----------------------------------------------------------------------------

    def _observe(self, index: int, event: MembershipEvent, now: float) -> None:
        self.delegates[index].member_event(event, now)
        if isinstance(event, MemberFailed) and self.index_of.get(event.member.name) == \
                self.target and index not in self.detected:
            self.detected[index] = now

    def _tick(self) -> None:
        now = self.sim.now
        for node in self.sim.nodes:
            if node.up:
                self.delegates[node.index].handle_timeout(now)
        self.sim.at(now + 1.0, self._tick)

    def _change(self) -> None:
        now = self.sim.now
        up = [n.index for n in self.sim.nodes if n.up]
        index = self.churn_rng.choice(up)
        table = self.tables[index]
        network = self.network_of[index]
        view = table.endpoints()  # (the node joined `network` alone) its own, in view order:
        mine = list(compress(view, map(table.node.__eq__, map(_owner_of, view))))
        roll = self.churn_rng.random()
        if mine and roll < 0.5:
            old = self.churn_rng.choice(mine)
            mac = bytes([6]) + self.churn_rng.getrandbits(40).to_bytes(5, "big")
            record = table.put_endpoint(network, old.ip, mac.hex(":"), now)
        elif mine and len(mine) >= self.endpoints:
            record = table.delete_endpoint(network, self.churn_rng.choice(mine).ip, now)
        else:
            record = self._add_endpoint(index, now)
        waiting = {i for i in self.members_of[network] if i != index and self.sim.nodes[i].up}
        self.pending.setdefault(record.key, []).append(_Change(now, record.version, waiting))
        self.result.changes += 1

    def accepted(self, index: int, record: Entry, now: float) -> None:
        changes = self.pending.get(record.key)
        if not changes:
            return
        for change in changes:
            if change.version <= record.version and index in change.waiting:
                change.waiting.discard(index)
                if not change.waiting:
                    self.latencies.append(now - change.start)
        self.pending[record.key] = [c for c in changes if c.waiting]
        if not self.pending[record.key]:
            del self.pending[record.key]

    def kill(self) -> None:
        self.target = self.rng.choice([n.index for n in self.sim.nodes if n.up])
        victim = self.tables[self.target]
        shown = [e for e in victim.endpoints() if e.owner == victim.node]
        kill_at = self.sim.now
        self.sim.kill(self.target)
        for key in [k for k in self.pending if k[1] == victim.node]:
            del self.pending[key]  # changes of a dead owner never converge: not counted
        for changes in self.pending.values():
            for change in changes:
                change.waiting.discard(self.target)
        watchers = {i for i in self.members_of[self.network_of[self.target]]
                    if i != self.target}

        def shows_victim(table: NeighborTable) -> bool:
            for e in shown:
                held = table.lookup(e.network, e.ip)
                if held is not None and held.owner == victim.node:
                    return True
            return False

        def withdraw_check() -> None:
            for i in list(watchers):
                if not shows_victim(self.tables[i]):
                    watchers.discard(i)
            if watchers:
                self.sim.at(self.sim.now + 0.01, withdraw_check)
            elif self.result.withdraw_all_s is None:
                self.result.withdraw_all_s = self.sim.now - kill_at

        self.kill_at = kill_at
        self.sim.at(kill_at + 0.01, withdraw_check)

    def run(self) -> TableSimResult:
        wall = time.perf_counter()
        # The warm cluster lives for the whole run: built without the cyclic collector, then
        # frozen out of its reach (otherwise every full collection walks millions of records;
        # 16 of them took ~8 s of a 90 s run at 1,000 nodes), and let go again at the end.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.warm_start()
        finally:
            gc.freeze()
            if collecting:
                gc.enable()
        try:
            return self._simulate(wall)
        finally:
            gc.unfreeze()

    def _simulate(self, wall: float) -> TableSimResult:
        sim = self.sim
        sim.at(0.5, self._tick)
        start = self.warmup_s
        end = start + self.duration_s
        if self.churn > 0:
            t = start + self.churn_rng.expovariate(self.churn)
            while t < end:
                sim.at(t, self._change)
                t += self.churn_rng.expovariate(self.churn)
        sim.at(start + self.duration_s / 3, self.kill)
        sim.run_until(start)
        before = (sim.counters.datagram_bytes, sim.counters.push_pull_bytes)
        sent_before = list(sim.bytes_sent)
        sim.run_until(end)
        udp = sim.counters.datagram_bytes - before[0]
        push_pull = sim.counters.push_pull_bytes - before[1]
        for network, members in self.members_of.items():
            sent = sum(sim.bytes_sent[i] - sent_before[i] for i in members)
            self.result.network_bytes_per_node_s[network] = sent / len(members) / self.duration_s
        sim.run_until(end + self.settle_s)
        self._finish(udp, push_pull)
        self.result.wall_s = time.perf_counter() - wall
        return self.result

    # -- results ----------------------------------------------------------------------------

    def _stale(self, index: int, alive: set[int], own_ids: set[int]) -> int:
        """Entries of a live node's view whose owner is dead, or no longer has them at that
        version. Most views hold a live owner's own records (`own_ids`): those are set aside
        by identity (C loops), the rest looked at one by one."""
        stale = 0
        view = self.tables[index].endpoints()
        odd = set(map(id, view)).difference(own_ids)
        for entry in compress(view, map(odd.__contains__, map(id, view))) if odd else ():
            owner = self.index_of[entry.owner]
            if owner not in alive:
                stale += 1
                continue
            truth = self.tables[owner].get(entry.network, entry.owner, entry.ip)
            if truth is None or truth.deleted or truth.version != entry.version:
                stale += 1
        return stale

    def _missing(self, peer: int, own: dict[int, list[Entry]], by_ip: dict[str, list[Entry]],
                 total: int) -> int:
        """Live owners' entries (`total` of them, `by_ip`) that a live peer of their network
        does not show at the owner's version: a peer's entry matches every live owner's entry
        of its address at the same version. An entry that is the one live owner's entry of
        its address (by identity) matches exactly that one (when it is not the peer's own);
        others are matched one by one."""
        single = {id(entries[0]) for entries in by_ip.values() if len(entries) == 1}
        node = self.tables[peer].node
        held_entries = self.tables[peer].endpoints()  # it joined this network alone
        held_ids = set(map(id, held_entries))
        matched = len(held_ids.intersection(single).difference(map(id, own[peer])))
        rest = held_ids.difference(single)
        for held in compress(held_entries, map(rest.__contains__, map(id, held_entries))) \
                if rest else ():
            for entry in by_ip.get(held.ip, ()):
                if entry.owner != node and (entry is held or entry.version == held.version):
                    matched += 1
        return total - len(own[peer]) - matched

    def _finish(self, udp: int, push_pull: int) -> None:
        r = self.result
        per = r.nodes * self.duration_s
        r.udp_bytes_per_node_s = udp / per
        r.push_pull_bytes_per_node_s = push_pull / per
        r.bytes_per_node_s = (udp + push_pull) / per
        r.unconverged = sum(len(changes) for changes in self.pending.values())
        if self.latencies:
            ordered = sorted(self.latencies)
            r.converged_p50_s = _percentile(ordered, 0.50)
            r.converged_p99_s = _percentile(ordered, 0.99)
            r.converged_max_s = ordered[-1]
        live = [n.index for n in self.sim.nodes if n.up]
        if live and all(i in self.detected for i in live):
            r.detect_all_s = max(self.detected[i] for i in live) - self.kill_at
        r.decode_errors = sum(d.statistics().decode_errors for d in self.delegates)
        alive = set(live)
        own = {index: self.tables[index].endpoints_of(self.tables[index].node)
               for index in live}
        own_ids = {id(e) for entries in own.values() for e in entries}
        for network, members in self.members_of.items():
            owners = [i for i in members if i in alive]
            by_ip: dict[str, list[Entry]] = {}
            for owner in owners:
                for entry in own[owner]:
                    by_ip.setdefault(entry.ip, []).append(entry)
            total = sum(len(own[owner]) for owner in owners)
            # A view that is, record for record, the live owners' own visible entries (each
            # address one owner's) has nothing stale or missing: a comparison of mappings (a C
            # loop; identical records compare without Entry.__eq__). Any other is counted.
            truth = {(network, ip): entries[0] for ip, entries in by_ip.items()} \
                if len(by_ip) == total else None
            for peer in owners:
                if truth is not None and self.tables[peer].view() == truth:
                    continue
                r.stale_entries += self._stale(peer, alive, own_ids)
                r.missing_entries += self._missing(peer, own, by_ip, total)
        if r.unconverged:
            r.notes.append(f"{r.unconverged} changes not held by every interested node")


@dataclass
class AgentCrashResult:
    """What one agent-crash run measured (times in simulated seconds; None: never reached)."""

    nodes: int
    endpoints: int
    networks: int
    loss: float
    seed: int
    duration_s: float
    grace_s: float
    agents_killed: int = 0
    hosts_killed: int = 0
    detect_all_s: float | None = None  # until every live node saw every killed node failed
    withdraw_hosts_p50_s: float | None = None
    withdraw_hosts_max_s: float | None = None
    hosts_shown: int = 0  # (live node, dead host) pairs of one network still shown at the end
    agents_kept: int = 0  # (live node, crashed agent) pairs of one network shown at the end
    agents_withdrawn: int = 0  # such pairs whose entries left the view at some point
    false_withdrawals: int = 0  # (live node, never-killed owner) pairs ever withdrawn
    false_failures: int = 0  # SWIM failures of never-killed members seen (liveness kept them)
    probes_sent: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class _AgentCrashRun(_Run):
    """The `agent-crash` scenario (module docstring) on the churn run's set-up."""

    def __init__(self, nodes: int, endpoints: int, loss: float, seed: int, duration_s: float,
                 network_size: int, liveness: LivenessConfig, agents_killed: float,
                 hosts_killed: float, warmup_s: float) -> None:
        self.liveness_config = liveness
        self.livenesses: list[HostLiveness] = []
        super().__init__(nodes, endpoints, 0.0, loss, seed, duration_s, network_size,
                         warmup_s, settle_s=0.0)
        self.loss = loss
        self.probe_rng = random.Random(f"overlay-sim:probes:{seed}")
        self.crash = AgentCrashResult(nodes, endpoints, self.network_count, loss, seed,
                                      duration_s, liveness.grace)
        self.fractions = (agents_killed, hosts_killed)
        self.host_up = [True] * nodes
        self.agent_down: set[int] = set()
        self.host_down: set[int] = set()
        self.killed_at = math.inf
        self.liveness_at = [math.inf] * nodes
        self.withdrawn: dict[tuple[int, int], float] = {}  # (viewer, owner) -> first time
        self.failed_seen: dict[tuple[int, int], float] = {}

    def _make_delegate(self, index: int, name: str) -> TableDelegate:
        delegate = super()._make_delegate(index, name)
        liveness = HostLiveness(self.liveness_config)
        if index < len(self.livenesses):
            self.livenesses[index] = liveness
        else:
            self.livenesses.append(liveness)
        delegate.liveness = liveness
        delegate.vtep_of = self._vtep_of
        return delegate

    def _vtep_of(self, member: Member) -> str | None:
        index = self.index_of.get(member.name)
        return None if index is None else str(_VTEP_BASE + index)

    # -- driving ----------------------------------------------------------------------------

    def _observe(self, index: int, event: MembershipEvent, now: float) -> None:
        self.delegates[index].member_event(event, now)
        if isinstance(event, MemberFailed):
            owner = self.index_of[event.member.name]
            self.failed_seen.setdefault((index, owner), now)
            if owner not in self.agent_down and owner not in self.host_down:
                self.crash.false_failures += 1
        self._watch_view(index, now)
        self._arm_liveness(index)

    def _arm_liveness(self, index: int) -> None:
        deadline = self.livenesses[index].next_deadline()
        if deadline < self.liveness_at[index]:
            self.liveness_at[index] = deadline
            self.sim.at(deadline, lambda: self._liveness_timer(index, deadline))

    def _liveness_timer(self, index: int, when: float) -> None:
        if self.liveness_at[index] != when:
            return
        self.liveness_at[index] = math.inf
        if not self.sim.nodes[index].up:
            return  # its agent is dead: nobody probes from there
        now = self.sim.now
        liveness = self.livenesses[index]
        liveness.handle_timeout(now)
        for vtep in liveness.probes_to_send():
            self.crash.probes_sent += 1
            target = int(ipaddress.ip_address(vtep) - int(_VTEP_BASE))
            lost = self.probe_rng.random() < self.loss or self.probe_rng.random() < self.loss
            if self.host_up[target] and not lost:
                low, high = self.sim.latency_s
                rtt = 2 * low + (high - low) * (self.probe_rng.random() + self.probe_rng.random())
                self.sim.at(now + rtt, functools.partial(self._answered, index, vtep))
        self._apply(index, now)

    def _answered(self, index: int, vtep: str) -> None:
        if self.sim.nodes[index].up:
            self.livenesses[index].probe_answered(vtep, self.sim.now)
            self._apply(index, self.sim.now)

    def _apply(self, index: int, now: float) -> None:
        self.delegates[index].apply_verdicts(now)
        self._watch_view(index, now)
        self._arm_liveness(index)

    def _watch_view(self, index: int, now: float) -> None:
        """Record the first time each owner's entries left this node's view."""
        table = self.tables[index]
        while (event := table.next_event()) is not None:
            if isinstance(event, EndpointChanged) and event.previous is not None and (
                    event.current is None or event.current.owner != event.previous.owner):
                owner = self.index_of[event.previous.owner]
                self.withdrawn.setdefault((index, owner), now)

    def _tick(self) -> None:
        now = self.sim.now
        for node in self.sim.nodes:
            if node.up:
                self.delegates[node.index].handle_timeout(now)
                self._watch_view(node.index, now)
        self.sim.at(now + 1.0, self._tick)

    def kill_both_groups(self) -> None:
        count = len(self.sim.nodes)
        chosen = self.rng.sample(range(count), round(count * sum(self.fractions)))
        split = round(count * self.fractions[0])
        self.agent_down, self.host_down = set(chosen[:split]), set(chosen[split:])
        self.killed_at = self.sim.now
        for index in chosen:
            self.sim.kill(index)
        for index in self.host_down:
            self.host_up[index] = False

    def run_crash(self) -> AgentCrashResult:
        wall = time.perf_counter()
        self.warm_start()
        sim = self.sim
        sim.at(0.5, self._tick)
        sim.at(self.warmup_s, self.kill_both_groups)
        sim.run_until(self.warmup_s + self.duration_s)
        self._finish_crash()
        self.crash.wall_s = time.perf_counter() - wall
        return self.crash

    def _finish_crash(self) -> None:
        r = self.crash
        r.agents_killed, r.hosts_killed = len(self.agent_down), len(self.host_down)
        killed = self.agent_down | self.host_down
        live = [n.index for n in self.sim.nodes if n.up]
        detections = [self.failed_seen.get((i, k)) for i in live for k in killed]
        if detections and all(t is not None for t in detections):
            r.detect_all_s = max(t for t in detections if t is not None) - self.killed_at
        withdrawals = []
        for viewer in live:
            network = self.network_of[viewer]
            for owner in self.members_of[network]:
                if owner == viewer:
                    continue
                first = self.withdrawn.get((viewer, owner))
                shown = self._shows(viewer, owner)
                if owner in self.host_down:
                    r.hosts_shown += shown
                    if first is not None and not shown:
                        withdrawals.append(first - self.killed_at)
                elif owner in self.agent_down:
                    r.agents_kept += shown
                    r.agents_withdrawn += first is not None
                else:
                    r.false_withdrawals += first is not None
        if withdrawals:
            ordered = sorted(withdrawals)
            r.withdraw_hosts_p50_s = _percentile(ordered, 0.5)
            r.withdraw_hosts_max_s = ordered[-1]

    def _shows(self, viewer: int, owner: int) -> bool:
        name = self.tables[owner].node
        return any(e.owner == name for e in self.tables[viewer].endpoints(self.network_of[owner]))


def run_agent_crash_sim(nodes: int, loss: float, seed: int, *, duration_s: float = 600.0,
                        endpoints: int = 2, network_size: int = 0, grace_s: float = 600.0,
                        agents_killed: float = 0.05, hosts_killed: float = 0.05,
                        warmup_s: float = 5.0) -> AgentCrashResult:
    """One run of the agent-crash scenario (module docstring); `grace_s = 0`: the baseline."""
    if nodes < 4:
        raise ValueError(f"nodes: need at least 4, got {nodes}")
    if agents_killed < 0 or hosts_killed < 0 or agents_killed + hosts_killed >= 1:
        raise ValueError(f"agents-killed {agents_killed} + hosts-killed {hosts_killed}: "
                         "each >= 0, together below 1")
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss: must be in [0, 1), got {loss}")
    if duration_s <= 0:
        raise ValueError(f"duration: must be > 0 seconds, got {duration_s}")
    liveness = LivenessConfig(grace=grace_s)
    return _AgentCrashRun(nodes, endpoints, loss, seed, duration_s, network_size, liveness,
                          agents_killed, hosts_killed, warmup_s).run_crash()


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_table_sim(nodes: int, endpoints: int, churn: float, loss: float, seed: int, *,
                  duration_s: float = 30.0, network_size: int = 0, warmup_s: float = 2.0,
                  settle_s: float = 10.0, scoped: bool = True) -> TableSimResult:
    """One run of the scenario in the module docstring."""
    if nodes < 4:
        raise ValueError(f"nodes: need at least 4, got {nodes}")
    if endpoints < 1:
        raise ValueError(f"endpoints-per-node: need at least 1, got {endpoints}")
    if churn < 0:
        raise ValueError(f"churn: must be >= 0 changes per second, got {churn}")
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss: must be in [0, 1), got {loss}")
    if duration_s <= 0:
        raise ValueError(f"duration: must be > 0 seconds, got {duration_s}")
    if network_size < 0 or 0 < network_size < 2:
        raise ValueError(f"network-size: 0 (one network) or at least 2, got {network_size}")
    return _Run(nodes, endpoints, churn, loss, seed, duration_s, network_size, warmup_s,
                settle_s, scoped).run()


_COLUMNS = ("scoped", "changes", "converged_p50_s", "converged_p99_s", "converged_max_s",
            "unconverged",
            "detect_all_s", "withdraw_all_s", "stale_entries", "missing_entries",
            "bytes_per_node_s", "udp_bytes_per_node_s", "push_pull_bytes_per_node_s",
            "decode_errors", "wall_s")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_CRASH_COLUMNS = ("agents_killed", "hosts_killed", "detect_all_s", "withdraw_hosts_p50_s",
                  "withdraw_hosts_max_s", "hosts_shown", "agents_kept", "agents_withdrawn",
                  "false_withdrawals", "false_failures", "probes_sent", "wall_s")


def _print_runs(title: str, columns: tuple[str, ...], heads: tuple[str, ...],
                runs: tuple[object, ...]) -> None:
    print(title)
    print(f"{'metric':<28}" + "".join(f"{head:>18}" for head in heads))
    for column in columns:
        print(f"{column:<28}" + "".join(f"{_cell(getattr(r, column)):>18}" for r in runs))


def _print_networks(heads: tuple[str, ...], runs: tuple[TableSimResult, ...],
                    members_of: dict[str, int]) -> None:
    """Bytes per node and second sent by each network's nodes, one column per run."""
    print(f"{'network (nodes)':<28}" + "".join(f"{head:>18}" for head in heads))
    for network in sorted(runs[0].network_bytes_per_node_s,
                          key=lambda name: (len(name), name)):
        label = f"{network} ({members_of[network]})"
        print(f"{label:<28}" + "".join(
            f"{_cell(r.network_bytes_per_node_s.get(network)):>18}" for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlay.sim",
                                     description="Neighbor table over SWIM, simulated.")
    parser.add_argument("--scenario", choices=("churn", "agent-crash"), default="churn")
    parser.add_argument("--agents-killed", type=float, default=0.05,
                        help="agent-crash: fraction of nodes whose agent dies (host forwards)")
    parser.add_argument("--hosts-killed", type=float, default=0.05,
                        help="agent-crash: fraction of nodes whose whole host dies")
    parser.add_argument("--grace", type=float, default=600.0,
                        help="agent-crash: dataplane.agent_down_grace, seconds")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--endpoints-per-node", type=int, default=50)
    parser.add_argument("--churn", type=float, default=20.0,
                        help="endpoint changes per second, cluster-wide")
    parser.add_argument("--loss", type=float, default=0.05, help="datagram loss probability")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0,
                        help="simulated seconds of churn")
    parser.add_argument("--network-size", type=int, default=0,
                        help="nodes per overlay network (0: all nodes in one network)")
    parser.add_argument("--unscoped", action="store_true",
                        help="also run the churn with unscoped table gossip (every record to "
                             "every member): the baseline of network scoping")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.scenario == "agent-crash":
        return _main_agent_crash(parser, args)
    plan = [(args.churn, True), (0.0, True)] + ([(args.churn, False)] if args.unscoped else [])
    try:
        runs = tuple(run_table_sim(args.nodes, args.endpoints_per_node, churn, args.loss,
                                   args.seed, duration_s=args.duration,
                                   network_size=args.network_size, scoped=scoped)
                     for churn, scoped in plan)
    except ValueError as exc:
        parser.error(str(exc))
    result = runs[0]
    heads = (f"churn {result.churn:g}/s", "no churn", "churn, unscoped")[:len(runs)]
    _print_runs(f"nodes={result.nodes} endpoints/node={result.endpoints} "
                f"networks={result.networks} loss={result.loss} seed={result.seed} "
                f"churn window={result.duration_s:g}s", _COLUMNS, heads, runs)
    members = {f"net{i}": len(range(i, args.nodes, result.networks))
               for i in range(result.networks)}  # as `_Run` assigns them: node i in i % count
    print("bytes per node and second, by network:")
    _print_networks(heads, runs, members)
    for note in result.notes:
        print(f"note: {note}")
    if args.json:
        payload = result.as_dict()
        payload["baseline"] = runs[1].as_dict()
        if args.unscoped:
            payload["unscoped"] = runs[2].as_dict()
        payload["wall_s"] = sum(r.wall_s for r in runs)
        print(json.dumps(payload, sort_keys=True))
    return 0


def _main_agent_crash(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The agent-crash scenario with the grace, then the same run without it (baseline)."""
    try:
        runs = [run_agent_crash_sim(args.nodes, args.loss, args.seed, duration_s=args.duration,
                                    endpoints=args.endpoints_per_node,
                                    network_size=args.network_size, grace_s=grace,
                                    agents_killed=args.agents_killed,
                                    hosts_killed=args.hosts_killed)
                for grace in (args.grace, 0.0)]
    except ValueError as exc:
        parser.error(str(exc))
    result, baseline = runs
    _print_runs(f"agent-crash: nodes={result.nodes} networks={result.networks} "
                f"loss={result.loss} seed={result.seed} duration={result.duration_s:g}s",
                _CRASH_COLUMNS, (f"grace {result.grace_s:g}s", "grace off"), (result, baseline))
    if args.json:
        payload = result.as_dict()
        payload["baseline"] = baseline.as_dict()
        payload["wall_s"] = result.wall_s + baseline.wall_s
        print(json.dumps(payload, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
