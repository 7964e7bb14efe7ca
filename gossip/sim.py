"""Discrete-event simulator: N real `Swim` state machines over a seeded fake network.

Owns: `Simulation` (virtual clock, event queue, fake UDP with loss/latency/partitions, fake
TCP push-pull streams, per-node delegates) and the scenarios of `python -m gossip.sim`.

Rules: trio-free and socket-free; every random draw comes from RNGs derived from the seed, so
a run is reproducible bit for bit. The network model: a datagram is lost with probability
`loss`, else delivered after a latency drawn uniformly from `latency_s`; nodes in different
partition groups cannot reach each other (UDP or TCP); a push-pull succeeds when both ends are
up and connected (TCP retransmits hide loss), its two halves each taking one latency.
Only the CLI's wall-clock measurement (and `--progress`) uses `time` and `resource`; the
simulation never reads a clock.

Profiles: `lan`, `wan`, `local` are our presets; `memberlist` is the baseline: the same core
run with memberlist's DefaultLANConfig numbers (3 indirect checks, suspicion 4 * log10 n
probe intervals, 2 confirmations) and no re-join of failed members, as bare memberlist.
It is our code with their numbers, not memberlist itself.

Usage (see `main`):
    python -m gossip.sim --nodes N [--scenario {all,join,fail,loss,partition,churn}] --seed S
        [--loss P] [--duration SECONDS] [--joiners J]
        [--profile {lan,wan,local,memberlist,both}] [--progress SECONDS] [--json]

Imports: gossip.* and the standard library.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip.config import PRESETS, SwimConfig
from gossip.delegate import Delegate
from gossip.identity import KeyCache, Signer
from gossip.members import FormedView, MemberDirectory
from gossip.swim import (
    MemberFailed,
    MemberLeft,
    MembershipEvent,
    MemberState,
    Swim,
)
from gossip.wire import Addr, MemberRecord, alive_signed_bytes

DelegateFactory = Callable[[int, str], Delegate | None]
EventObserver = Callable[[int, MembershipEvent, float], None]

_DELIVER, _TIMER, _PP_REQUEST, _PP_REPLY, _CALL = range(5)
_SEEN = (MemberState.ALIVE, MemberState.SUSPECT)


@dataclass
class SimNode:
    """One simulated host: its address, its current `Swim` (None while down)."""

    index: int
    name: str
    addr: Addr
    swim: Swim | None = None
    generation: int = 0
    timer_at: float = math.inf
    #: Incarnation of its previous life: failures at or below it are about that life.
    killed_incarnation: int = -1
    delegate: Delegate | None = None

    @property
    def up(self) -> bool:
        return self.swim is not None


@dataclass
class NetworkCounters:
    datagrams_sent: int = 0
    datagram_bytes: int = 0
    datagrams_lost: int = 0
    datagrams_cut: int = 0
    push_pulls: int = 0
    push_pulls_failed: int = 0
    push_pull_bytes: int = 0


class Simulation:
    """A cluster of `Swim`s on a fake network. Step with `run_until`, inspect `nodes`."""

    def __init__(self, count: int, *, seed: int, config: SwimConfig, loss: float = 0.0,
                 latency_s: tuple[float, float] = (0.0005, 0.002), meta_bytes: int = 48,
                 delegate_factory: DelegateFactory | None = None,
                 formed: int | None = None, signed: bool = False) -> None:
        """`count` nodes; the first `formed` (default: all) start up already knowing each
        other, as after a completed join; the others stay down until `start_node`.
        `signed`: every node has an identity key and verifies every other's claims against
        one shared key cache (the sim's stand-in for etcd)."""
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss: must be in [0, 1), got {loss!r}")
        self.config = config
        self.seed = seed
        self.loss = loss
        self.latency_s = latency_s
        self.meta_bytes = meta_bytes
        self.now = 0.0
        self.counters = NetworkCounters()
        self._delegate_factory = delegate_factory
        self._rng = random.Random(f"net:{seed}")
        self._queue: list[tuple[float, int, int, Any]] = []
        self._queue_seq = 0
        self._observers: list[EventObserver] = []
        self.nodes = [SimNode(i, f"n{i:05d}", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                                               7946)) for i in range(count)]
        self._by_addr = {node.addr: node for node in self.nodes}
        self.groups = [0] * count
        #: Bytes each node sent (UDP payloads and its side of every push-pull), by index.
        self.bytes_sent = [0] * count
        self.signers = {n.name: Signer.generate() for n in self.nodes} if signed else {}
        self.keys = KeyCache({name: s.public_key for name, s in self.signers.items()}) \
            if signed else None
        # One directory for every node: ids in node order, records shared between views.
        self.directory = MemberDirectory(shared=True)
        for node in self.nodes:
            self.directory.id_for(node.name)
        first = self.nodes[: count if formed is None else formed]
        for node in first:
            self._boot(node)
        view = FormedView(self.directory, [self._record(n) for n in first], self.now)
        for node in first:
            assert node.swim is not None
            node.swim.adopt_view(view, self.now)
            self._flush(node)

    # -- control -------------------------------------------------------------------------------

    def add_observer(self, observer: EventObserver) -> None:
        """Call `observer(node_index, event, now)` for every membership event of every node."""
        self._observers.append(observer)

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run `action()` at simulated time `when`."""
        self._push(when, _CALL, action)

    def run_until(self, until: float) -> None:
        """Process every event up to simulated time `until`."""
        queue = self._queue
        nodes = self.nodes
        while queue and queue[0][0] <= until:
            when, _, kind, payload = heapq.heappop(queue)
            self.now = when
            if kind == _TIMER:
                node = nodes[payload]
                if node.timer_at != when or node.swim is None:
                    continue
                node.timer_at = math.inf
                node.swim.handle_timeout(when)
                self._flush(node)
            elif kind == _DELIVER:
                src, dst, data = payload
                if dst.swim is None or self.groups[src.index] != self.groups[dst.index]:
                    continue
                dst.swim.receive_datagram(data, src.addr, when)
                self._flush(dst)
            elif kind == _PP_REQUEST:
                self._push_pull_request(*payload)
            elif kind == _PP_REPLY:
                self._push_pull_reply(*payload)
            else:
                payload()
        self.now = max(self.now, until)

    def start_node(self, index: int, seeds: list[int]) -> None:
        """Start (or restart, as a fresh process) node `index` and join through `seeds`."""
        node = self.nodes[index]
        if node.swim is not None:
            raise ValueError(f"node {index} is already up")
        swim = self._boot(node)
        swim.join([self.nodes[s].addr for s in seeds], self.now)
        self._flush(node)

    def kill(self, index: int) -> None:
        """Crash node `index`: it stops at once, sends nothing more."""
        node = self.nodes[index]
        if node.swim is not None:
            node.killed_incarnation = node.swim.incarnation
            node.swim = None
            node.timer_at = math.inf

    def leave(self, index: int, linger_s: float = 1.0) -> None:
        """Graceful leave of node `index`; it keeps gossiping `linger_s`, then stops."""
        node = self.nodes[index]
        if node.swim is None:
            return
        node.swim.leave(self.now)
        self._flush(node)
        generation = node.generation
        self.at(self.now + linger_s,
                lambda: self.kill(index) if node.generation == generation else None)

    def partition(self, groups: list[int]) -> None:
        """Cut the network: nodes talk only within their group (`groups[i]` per node)."""
        if len(groups) != len(self.nodes):
            raise ValueError("partition: one group number per node")
        self.groups = list(groups)

    def heal(self) -> None:
        """Remove every cut."""
        self.groups = [0] * len(self.nodes)

    def sync_node(self, index: int) -> None:
        """Collect what node `index` wants to send after a caller touched its `Swim` (or its
        delegate) directly."""
        self._flush(self.nodes[index])

    def reachable(self, a: int, b: int) -> bool:
        return (self.nodes[a].swim is not None and self.nodes[b].swim is not None
                and self.groups[a] == self.groups[b])

    def views_converged(self, *, check_down: bool = False) -> bool:
        """Every up node sees every other up node alive or suspect (and, with `check_down`,
        no down node so).

        Counted, not looked up name by name (10^8 lookups at 10,000 nodes): a view holds only
        the simulation's nodes, so it sees every up node exactly when the members it sees
        (`cluster_size`) less the down nodes it still sees equal the up nodes."""
        up = [n.swim for n in self.nodes if n.swim is not None]
        wanted = len(up)
        if any(swim.cluster_size() < wanted for swim in up):
            return False
        if check_down and any(swim.cluster_size() != wanted for swim in up):
            return False
        down = [n.name for n in self.nodes if n.swim is None]
        for swim in up:
            state_of = swim.state_of
            seen_down = sum(1 for name in down if state_of(name) in _SEEN)
            if swim.cluster_size() - seen_down != wanted or (check_down and seen_down):
                return False
        return True

    # -- internals -------------------------------------------------------------------------------

    def _record(self, node: SimNode) -> MemberRecord:
        meta = self._meta(node)
        signer = self.signers.get(node.name)
        if signer is None:
            return MemberRecord(node.name, node.addr, meta, 0, MemberState.ALIVE)
        key = signer.public_key
        return MemberRecord(node.name, node.addr, meta, 0, MemberState.ALIVE, key,
                            signer.sign(alive_signed_bytes(0, node.name, node.addr, meta, key)))

    def _meta(self, node: SimNode) -> bytes:
        return (node.addr[0].encode() + b"|vxmesh/0.1|").ljust(self.meta_bytes, b".")

    def _boot(self, node: SimNode) -> Swim:
        node.generation += 1
        if self._delegate_factory is not None:
            node.delegate = self._delegate_factory(node.index, node.name)
        swim = Swim(self.config, node.name, node.addr, meta=self._meta(node),
                    rng=random.Random(f"node:{self.seed}:{node.index}:{node.generation}"),
                    now=self.now, delegate=node.delegate, signer=self.signers.get(node.name),
                    keys=self.keys, directory=self.directory)
        node.swim = swim
        node.timer_at = math.inf
        return swim

    def _push(self, when: float, kind: int, payload: Any) -> None:
        self._queue_seq += 1
        heapq.heappush(self._queue, (when, self._queue_seq, kind, payload))

    def _latency(self) -> float:
        low, high = self.latency_s
        return low + (high - low) * self._rng.random()

    def _flush(self, node: SimNode) -> None:
        swim = node.swim
        if swim is None:
            return
        counters = self.counters
        rand = self._rng.random
        sent = 0
        datagrams = swim.datagrams_to_send()
        if datagrams:
            # (the hot loop of every run: `_push` and `_latency` written out)
            by_addr, groups, loss, queue = self._by_addr, self.groups, self.loss, self._queue
            low, high = self.latency_s
            spread = high - low
            group = groups[node.index]
            now = self.now
            for data, addr in datagrams:
                size = len(data)
                sent += size
                dst = by_addr.get(addr)
                if dst is None:
                    continue
                if loss and rand() < loss:
                    counters.datagrams_lost += 1
                    continue
                if group != groups[dst.index]:
                    counters.datagrams_cut += 1
                    continue
                self._queue_seq += 1
                heapq.heappush(queue, (now + low + spread * rand(), self._queue_seq, _DELIVER,
                                       (node, dst, data)))
            counters.datagrams_sent += len(datagrams)
            counters.datagram_bytes += sent
            self.bytes_sent[node.index] += sent
        for start in swim.push_pulls_to_start():
            dst = self._by_addr.get(start.addr)
            if dst is None or not self.reachable(node.index, dst.index):
                # The connection fails: the transport connects before it sends any state.
                counters.push_pulls += 1
                counters.push_pulls_failed += 1
                continue
            chunks = swim.push_pull_state(start.join, start.addr)
            self._push(self.now + self._latency(), _PP_REQUEST,
                       (node, node.generation, dst, start.join, chunks))
        event = swim.next_event()
        while event is not None:
            for observer in self._observers:
                observer(node.index, event, self.now)
            event = swim.next_event()
        deadline = swim.next_deadline()
        if deadline < node.timer_at:
            node.timer_at = deadline
            self._push(deadline, _TIMER, node.index)

    def _push_pull_request(self, src: SimNode, generation: int, dst: SimNode | None,
                           join: bool, chunks: list[bytes]) -> None:
        counters = self.counters
        counters.push_pulls += 1
        if dst is None or dst.swim is None or not self.reachable(src.index, dst.index):
            counters.push_pulls_failed += 1
            return
        size = sum(len(c) for c in chunks)
        counters.push_pull_bytes += size
        self.bytes_sent[src.index] += size
        for chunk in chunks:
            dst.swim.merge_push_pull_chunk(chunk, src.addr, join, self.now)
        # As the transport does: the reply is built once the request is merged, for the
        # initiator by name (its signed hello names it).
        reply = dst.swim.push_pull_state(join, src.name)
        self._flush(dst)
        self._push(self.now + self._latency(), _PP_REPLY, (src, generation, dst, join, reply))

    def _push_pull_reply(self, src: SimNode, generation: int, dst: SimNode, join: bool,
                         chunks: list[bytes]) -> None:
        if src.swim is None or src.generation != generation:
            return
        if dst.swim is None or not self.reachable(src.index, dst.index):
            self.counters.push_pulls_failed += 1
            return
        size = sum(len(c) for c in chunks)
        self.counters.push_pull_bytes += size
        self.bytes_sent[dst.index] += size
        for chunk in chunks:
            src.swim.merge_push_pull_chunk(chunk, dst.addr, join, self.now)
        self._flush(src)


# -- scenarios ---------------------------------------------------------------------------------

SCENARIOS = ("join", "fail", "loss", "partition", "churn")
PROFILES = {**PRESETS, "memberlist": SwimConfig.memberlist_lan}


@dataclass
class ScenarioResult:
    """What one scenario run measured (times in simulated seconds, None if never reached)."""

    nodes: int
    scenario: str
    seed: int
    profile: str
    loss: float
    duration_s: float
    converged_s: float | None = None
    detect_first_s: float | None = None
    detect_all_s: float | None = None
    false_positives: int = 0
    false_positive_events: int = 0
    left_all_s: float | None = None
    msgs_per_node_s: float = 0.0
    bytes_per_node_s: float = 0.0
    udp_bytes_per_node_s: float = 0.0
    push_pull_bytes_per_node_s: float = 0.0
    wall_s: float = 0.0
    signed: bool = False
    #: CPU milliseconds the whole simulation spent per node per simulated second.
    cpu_ms_per_node_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class _Watch:
    """Event bookkeeping for a scenario: detections, false positives, leaves."""

    def __init__(self, sim: Simulation, grace_s: float) -> None:
        self.sim = sim
        self.grace_s = grace_s
        self.index_of = {n.name: n.index for n in sim.nodes}
        self.targets: dict[int, float] = {}          # killed node -> kill time
        self.detected: dict[int, dict[int, float]] = {}
        self.leaves: dict[int, float] = {}
        self.left_seen: dict[int, set[int]] = {}
        self.left_done: dict[int, float] = {}
        self.false_nodes: set[int] = set()
        self.false_events = 0
        self.cut_groups: list[int] | None = None
        self.cut_end = -math.inf
        self.cross_failed: list[int] = [0] * len(sim.nodes)
        self.cross_first: float | None = None
        sim.add_observer(self.observe)

    def observe(self, observer: int, event: MembershipEvent, now: float) -> None:
        if isinstance(event, MemberFailed):
            target = self.index_of[event.member.name]
            if target in self.targets and event.member.incarnation <= self.sim.nodes[
                    target].killed_incarnation:
                self.detected.setdefault(target, {})[observer] = now
                return
            cut = self.cut_groups
            if (cut is not None and cut[observer] != cut[target]
                    and now <= self.cut_end + self.grace_s):
                self.cross_failed[observer] += 1
                if self.cross_first is None:
                    self.cross_first = now
                return
            node = self.sim.nodes[target]
            if node.swim is not None and event.member.incarnation > node.killed_incarnation:
                self.false_nodes.add(target)
                self.false_events += 1
        elif isinstance(event, MemberLeft):
            target = self.index_of[event.member.name]
            if target in self.leaves:
                seen = self.left_seen.setdefault(target, set())
                seen.add(observer)
                if target not in self.left_done and all(
                        n.index in seen for n in self.sim.nodes
                        if n.swim is not None and n.index != target):
                    self.left_done[target] = now - self.leaves[target]

    def detection(self, target: int) -> tuple[float | None, float | None]:
        kill = self.targets[target]
        seen = self.detected.get(target, {})
        first = min(seen.values()) - kill if seen else None
        live = [n.index for n in self.sim.nodes if n.swim is not None and n.index != target]
        if live and all(i in seen for i in live):
            return first, max(seen[i] for i in live) - kill
        return first, None


def run_scenario(scenario: str, nodes: int, seed: int, *, profile: str = "lan",
                 loss: float | None = None, duration: float | None = None,
                 joiners: int | None = None, cut_s: float = 60.0,
                 signed: bool = False, progress_s: float | None = None) -> ScenarioResult:
    """Run one scenario and measure it. See `main` for what each scenario does.
    `progress_s`: every that many simulated seconds, one line on stderr (how far, false
    positives so far, CPU, wall, peak RSS), so a long run that is stopped still tells."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: expected one of {SCENARIOS}, got {scenario!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {tuple(PROFILES)}, got {profile!r}")
    if nodes < 4:
        raise ValueError(f"nodes: need at least 4, got {nodes}")
    config = PROFILES[profile]()
    if loss is None:
        loss = 0.1 if scenario == "loss" else 0.0
    defaults = {"join": 30.0, "fail": 60.0, "loss": 60.0, "partition": 5.0 + cut_s + 90.0,
                "churn": 120.0}
    duration = defaults[scenario] if duration is None else duration
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    rng = random.Random(f"scenario:{seed}")
    formed = max(1, nodes - (max(1, nodes // 100) if joiners is None else joiners)) \
        if scenario == "join" else nodes
    # The formed cluster lives for the whole run: built without the cyclic collector and
    # frozen out of its reach, so that full collections do not walk its millions of records
    # (at 5,000 nodes, 10 s of the fail scenario: 4 full collections and 18.1 s of CPU
    # before, 1 and 16.5 s after), and let go again when the run ends.
    collecting = gc.isenabled()
    gc.disable()
    try:
        sim = Simulation(nodes, seed=seed, config=config, loss=loss, formed=formed,
                         signed=signed)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    result = ScenarioResult(nodes, scenario, seed, profile, loss, duration, signed=signed)
    try:
        return _run(sim, result, cut_s, progress_s, rng, formed, wall_start, cpu_start)
    finally:
        gc.unfreeze()


def _run(sim: Simulation, result: ScenarioResult, cut_s: float, progress_s: float | None,
         rng: random.Random, formed: int, wall_start: float, cpu_start: float
         ) -> ScenarioResult:
    """The body of `run_scenario` once its simulation is built: fills in `result`."""
    nodes, scenario, duration = result.nodes, result.scenario, result.duration_s
    config = sim.config
    grace = config.suspicion_max_s(nodes) + 4 * config.probe_interval_s
    watch = _Watch(sim, grace)
    step = 0.1
    start_at = 5.0
    report_every = math.inf if progress_s is None else progress_s
    next_report = report_every

    def run_until(until: float) -> None:
        # (in slices at the progress marks: the same events in the same order)
        nonlocal next_report
        while next_report <= until:
            sim.run_until(next_report)
            print(f"progress: {scenario} t={next_report:.0f} s simulated, "
                  f"false_positives={len(watch.false_nodes)} "
                  f"(events {watch.false_events}), "
                  f"cpu={time.process_time() - cpu_start:.0f} s, "
                  f"wall={time.perf_counter() - wall_start:.0f} s, "
                  f"peak_rss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB",
                  file=sys.stderr, flush=True)
            next_report += report_every
        sim.run_until(until)

    def run_checking(until: float, check: Callable[[], bool], since: float) -> float | None:
        t = sim.now
        while t < until:
            t = min(until, t + step)
            run_until(t)
            if check():
                return t - since
        return None

    if scenario == "join":
        join_at = 1.0
        run_until(join_at)
        for index in range(formed, nodes):
            sim.start_node(index, rng.sample(range(formed), min(3, formed)))
        result.converged_s = run_checking(duration, sim.views_converged, join_at)
        run_until(duration)
    elif scenario in ("fail", "loss"):
        run_until(start_at)
        target = rng.randrange(nodes)
        watch.targets[target] = sim.now
        sim.kill(target)

        def detected() -> bool:
            return watch.detection(target)[1] is not None

        run_checking(duration, detected, start_at)
        result.detect_first_s, result.detect_all_s = watch.detection(target)
        run_until(duration)
    elif scenario == "partition":
        run_until(start_at)
        order = list(range(nodes))
        rng.shuffle(order)
        groups = [0] * nodes
        for i in order[: nodes // 2]:
            groups[i] = 1
        watch.cut_groups = groups
        watch.cut_end = start_at + cut_s
        sim.partition(groups)
        sizes = [nodes - nodes // 2, nodes // 2]

        def split_seen() -> bool:
            return all(watch.cross_failed[i] >= sizes[1 - groups[i]] for i in range(nodes))

        run_checking(start_at + cut_s, split_seen, start_at)
        if watch.cross_first is not None:
            result.detect_first_s = watch.cross_first - start_at
        if split_seen():
            result.detect_all_s = max(0.0, sim.now - start_at)
        run_until(start_at + cut_s)
        sim.heal()
        result.converged_s = run_checking(duration, sim.views_converged, start_at + cut_s)
        if result.converged_s is None:
            result.notes.append("views did not reconverge after the cut")
    else:  # churn
        run_until(start_at)
        churn_end = max(start_at + 10.0, duration - 60.0)
        cap = max(1, nodes // 10)
        t = start_at
        while t < churn_end:
            t += 1.0
            run_until(t)
            up = [n.index for n in sim.nodes if n.swim is not None]
            down = [n.index for n in sim.nodes if n.swim is None]
            if down and (len(down) >= cap or rng.random() < 0.5):
                sim.start_node(rng.choice(down), rng.sample(up, 3))
            else:
                victim = rng.choice(up)
                if rng.random() < 0.5:
                    watch.leaves[victim] = sim.now
                    sim.leave(victim)
                else:
                    sim.kill(victim)
        run_until(churn_end)
        result.converged_s = run_checking(
            duration, lambda: sim.views_converged(check_down=True), churn_end)
        run_until(duration)
        if watch.left_done:
            result.left_all_s = max(watch.left_done.values())
    result.duration_s = sim.now
    result.false_positives = len(watch.false_nodes)
    result.false_positive_events = watch.false_events
    counters = sim.counters
    per = nodes * max(sim.now, 1e-9)
    result.msgs_per_node_s = counters.datagrams_sent / per
    result.udp_bytes_per_node_s = counters.datagram_bytes / per
    result.push_pull_bytes_per_node_s = counters.push_pull_bytes / per
    result.bytes_per_node_s = result.udp_bytes_per_node_s + result.push_pull_bytes_per_node_s
    result.wall_s = time.perf_counter() - wall_start
    result.cpu_ms_per_node_s = (time.process_time() - cpu_start) * 1000 / nodes / duration
    return result


_COLUMNS = ("converged_s", "detect_first_s", "detect_all_s", "false_positives", "left_all_s",
            "msgs_per_node_s", "bytes_per_node_s", "udp_bytes_per_node_s",
            "push_pull_bytes_per_node_s", "duration_s", "wall_s", "cpu_ms_per_node_s")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(results: list[ScenarioResult]) -> str:
    names = [r.profile + ("+sign" if r.signed else "") for r in results]
    head = f"{'metric':<28}" + "".join(f"{name:>14}" for name in names)
    lines = [head, "-" * len(head)]
    for column in _COLUMNS:
        lines.append(f"{column:<28}" + "".join(f"{_cell(getattr(r, column)):>14}"
                                               for r in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Scenarios (simulated time; the cluster starts formed unless the scenario says so):
    join: N - J formed, J = --joiners (default N/100, min 1) new nodes join through 3 seeds
        at t = 1 s (J = N - 1: cold start, everyone joins through node 0);
        converged_s = until every node sees every node alive.
    fail: a random node crashes at t = 5 s; detect_first_s / detect_all_s.
    loss: like fail with --loss (default 0.1) on every datagram; false_positives.
    partition: a random 50/50 cut from t = 5 s for 60 s; detect_* = split seen;
        converged_s = from the end of the cut to one view.
    churn: from t = 5 s, every second a node crashes, leaves or restarts and rejoins
        (at most N/10 down), until 60 s before the end; converged_s from the end of churn.
    """
    parser = argparse.ArgumentParser(prog="python -m gossip.sim",
                                     description="Simulate a SWIM cluster (see gossip/sim.py).",
                                     epilog=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--scenario", choices=("all", *SCENARIOS), default="all",
                        help="one scenario, or all of them one after another (the default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=None,
                        help="datagram loss probability (default 0.1 for loss, else 0)")
    parser.add_argument("--duration", type=float, default=None,
                        help="simulated seconds (default depends on the scenario)")
    parser.add_argument("--joiners", type=int, default=None,
                        help="join scenario: nodes joining the formed cluster at t = 1 s "
                             "(default N/100; N-1 is a cold start through one seed)")
    parser.add_argument("--profile", choices=(*PROFILES, "both"), default="lan",
                        help="config preset; 'both' runs lan and the memberlist baseline")
    parser.add_argument("--sign", choices=("off", "on", "both"), default="off",
                        help="origin authentication (Ed25519 alive/leave signatures); "
                             "'both' runs off, on, off, on with the first profile")
    parser.add_argument("--progress", type=float, default=None, metavar="SECONDS",
                        help="a line on stderr every SECONDS simulated (false positives so "
                             "far, CPU, wall, peak RSS)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.nodes < 4:
        parser.error(f"--nodes: need at least 4, got {args.nodes}")
    if args.loss is not None and not 0.0 <= args.loss < 1.0:
        parser.error(f"--loss: must be in [0, 1), got {args.loss}")
    if args.joiners is not None and not 1 <= args.joiners < args.nodes:
        parser.error(f"--joiners: must be in [1, nodes), got {args.joiners}")
    if args.duration is not None and args.duration <= 0:
        parser.error(f"--duration: must be > 0, got {args.duration}")
    if args.progress is not None and args.progress <= 0:
        parser.error(f"--progress: must be > 0, got {args.progress}")
    profiles = ["lan", "memberlist"] if args.profile == "both" else [args.profile]
    runs = ([(profiles[0], signed) for signed in (False, True, False, True)]
            if args.sign == "both" else [(p, args.sign == "on") for p in profiles])
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    payloads = {}
    for scenario in scenarios:
        results = [run_scenario(scenario, args.nodes, args.seed, profile=p, loss=args.loss,
                                duration=args.duration, joiners=args.joiners, signed=signed,
                                progress_s=args.progress)
                   for p, signed in runs]
        print(f"scenario={scenario} nodes={args.nodes} seed={args.seed} "
              f"loss={results[0].loss}")
        print(format_table(results))
        for r in results:
            for note in r.notes:
                print(f"note ({r.profile}): {note}")
        payloads[scenario] = _payload(results, args.sign == "both")
    if args.json:
        payload = payloads[scenarios[0]] if len(scenarios) == 1 else {
            "nodes": args.nodes, "seed": args.seed, "scenarios": payloads}
        print(json.dumps(payload, sort_keys=True))
    return 0


def _payload(results: list[ScenarioResult], sign_pairs: bool) -> dict[str, object]:
    """One scenario's JSON: the first run, the baseline under "baseline" (or, for the signing
    comparison, the unsigned and signed runs as two lists)."""
    if sign_pairs:
        return {"unsigned": [r.as_dict() for r in results if not r.signed],
                "signed": [r.as_dict() for r in results if r.signed]}
    payload = results[0].as_dict()
    if len(results) > 1:
        payload["baseline"] = results[1].as_dict()
    return payload


if __name__ == "__main__":
    sys.exit(main())
