"""SWIM configuration: one frozen dataclass, three presets (`PRESETS` by name), and the formulas
derived from it.

Owns: every tunable of the membership protocol, each with its unit, and the functions of the
cluster size `n` that memberlist made standard (retransmit limit, suspicion timeouts, push-pull
scaling). Rules: fields are plain numbers; presets are built with `dataclasses.replace`;
`validate()` rejects a bad value naming the field. Pure: imports only the standard library,
`gossip.broadcast` and `gossip.errors`.

Formulas (n = estimated cluster size, members alive or suspect, self included):

    retransmit_limit(n)   = retransmit_mult * ceil(log10(n + 1))           [transmissions]
    suspicion_min_s(n)    = suspicion_mult * max(1, log10(n)) * probe_interval_s   [s]
    suspicion_max_s(n)    = suspicion_max_timeout_mult * suspicion_min_s(n)       [s]
    suspicion timeout after c independent confirmations (Lifeguard):
        max(min, max - (max - min) * ln(c + 1) / ln(k + 1)),  k = confirmations_needed(n)
    confirmations_needed(n) = suspicion_confirmations, or 0 when n - 2 < it      [peers]
    push_pull_interval_for(n) = push_pull_interval_s * (ceil(log2 n - log2 T) + 1) if n > T,
        else push_pull_interval_s, T = push_pull_scale_threshold                    [s]
    push-pull period used = max(push_pull_interval_for(n),
        2 * membership state bytes / push_pull_bytes_per_s) (0: no stretch)        [s]
    probe interval / probe timeout actually used = value * (awareness + 1), awareness in
        [0, awareness_max_multiplier - 1] (Lifeguard local health)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from gossip.broadcast import retransmit_limit
from gossip.errors import GossipError


class SwimConfigError(GossipError):
    """A configuration value is out of range; the message names the field and the value."""


@dataclass(frozen=True)
class SwimConfig:
    """Tunables of the SWIM core. Defaults are the LAN preset; see `lan()`, `wan()`, `local()`."""

    #: s. Time between two probes of randomly ordered members (scaled by awareness).
    probe_interval_s: float = 1.0
    #: s. Wait for a direct ack before asking `indirect_checks` peers (scaled by awareness).
    probe_timeout_s: float = 0.5
    #: peers. How many members are asked to ping a target that missed its direct ack.
    indirect_checks: int = 4
    #: multiplier. Upper bound of the awareness scaling of probe interval and timeout.
    awareness_max_multiplier: int = 8
    #: s. Time between two piggyback gossip rounds (only when something is queued).
    gossip_interval_s: float = 0.2
    #: peers. Members each gossip round sends a packet to.
    gossip_nodes: int = 3
    #: s. After a member is declared failed we still gossip to it this long, so it can refute.
    gossip_to_dead_s: float = 30.0
    #: transmissions per log10 step. See retransmit_limit(n).
    retransmit_mult: int = 4
    #: probe intervals per log10 step. See suspicion_min_s(n).
    suspicion_mult: float = 2.0
    #: multiplier. Suspicion starts at this times the minimum. See suspicion_max_s(n).
    suspicion_max_timeout_mult: float = 6.0
    #: peers. Independent suspicions that bring the timeout down to its minimum (Lifeguard k).
    suspicion_confirmations: int = 3
    #: s. Base period of full-state push-pull with one random member (scaled by cluster size).
    push_pull_interval_s: float = 30.0
    #: members. Above this size the push-pull period grows with log2(n).
    push_pull_scale_threshold: int = 32
    #: bytes/s. The periodic push-pull is stretched beyond push_pull_interval_for(n) so that
    #: exchanging our membership state (its size both ways) averages at most this per node:
    #: at 10,000 members a full state is ~750 KB, every 300 s that would be 5 KB/s. 0: no cap.
    push_pull_bytes_per_s: float = 1500.0
    #: s. Period of re-joining (push-pull) one random failed member, so partitions heal;
    #: None disables it (bare memberlist behaviour: partitions never heal).
    reconnect_interval_s: float | None = 30.0
    #: s. A failed member is remembered (and re-joined) this long, then reaped.
    remember_failed_s: float = 86_400.0
    #: s. A member that left gracefully is remembered (as a tombstone) this long.
    remember_left_s: float = 86_400.0
    #: bytes. UDP payload budget of one compound packet, encryption overhead included.
    udp_budget: int = 1400
    #: bytes. Largest node metadata carried in alive messages.
    meta_limit: int = 512
    #: bytes. Largest push-pull chunk (membership or delegate state) streamed over TCP.
    push_pull_chunk_limit: int = 65_536
    #: peers. A graceful leave is sent directly to this many members, then gossiped.
    leave_fanout: int = 8
    #: s. After a join, a push-pull with one random alive member this often (jittered by
    #: 0.5-1.5x) while our view keeps growing: in a cold start the seed knew few of the nodes
    #: joining with us, and full-state exchanges spread a whole view far faster than alive
    #: messages piggybacked one by one.
    join_sync_interval_s: float = 0.5
    #: rounds. At most this many such push-pulls after a join (0: none).
    join_sync_rounds: int = 16

    def validate(self) -> SwimConfig:
        """Return self, or raise SwimConfigError naming the first bad field and its value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "reconnect_interval_s":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SwimConfigError(f"SwimConfig.{f.name}: expected a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise SwimConfigError(
                    f"SwimConfig.{f.name}: must be a finite number >= 0, got {value!r}"
                )
        positive = ("probe_interval_s", "probe_timeout_s", "gossip_interval_s",
                    "push_pull_interval_s", "retransmit_mult", "suspicion_mult",
                    "awareness_max_multiplier", "gossip_nodes", "push_pull_scale_threshold",
                    "join_sync_interval_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SwimConfigError(
                    f"SwimConfig.{name}: must be > 0, got {getattr(self, name)!r}")
        if self.reconnect_interval_s is not None and self.reconnect_interval_s <= 0:
            raise SwimConfigError(
                f"SwimConfig.reconnect_interval_s: must be > 0 or None, "
                f"got {self.reconnect_interval_s!r}"
            )
        if self.probe_timeout_s >= self.probe_interval_s:
            raise SwimConfigError(
                f"SwimConfig.probe_timeout_s: must be below probe_interval_s "
                f"({self.probe_interval_s!r}), got {self.probe_timeout_s!r}"
            )
        if self.suspicion_max_timeout_mult < 1:
            raise SwimConfigError(
                f"SwimConfig.suspicion_max_timeout_mult: must be >= 1, "
                f"got {self.suspicion_max_timeout_mult!r}"
            )
        if not 200 <= self.udp_budget <= 65_000:
            raise SwimConfigError(f"SwimConfig.udp_budget: must be in [200, 65000], "
                              f"got {self.udp_budget!r}")
        if not 0 <= self.meta_limit <= self.udp_budget // 2:
            raise SwimConfigError(f"SwimConfig.meta_limit: must be in [0, udp_budget/2], "
                              f"got {self.meta_limit!r}")
        if self.push_pull_chunk_limit < 4096:
            raise SwimConfigError(f"SwimConfig.push_pull_chunk_limit: must be >= 4096, "
                              f"got {self.push_pull_chunk_limit!r}")
        return self

    # -- presets ---------------------------------------------------------------------------

    @classmethod
    def lan(cls) -> SwimConfig:
        """Our LAN preset: memberlist's LAN timings, a faster Lifeguard suspicion, re-joins.

        probe 1 s / timeout 0.5 s; 4 indirect checks (memberlist: 3; at 10 % loss the fourth
        cuts false suspicions about 3x for a few datagrams per failed direct probe); gossip
        200 ms to 3 members; retransmit 4 * ceil(log10(n+1)); suspicion_min =
        2 * max(1, log10 n) * 1 s (6 s at n = 1,000), maximum 6x that, reaching the minimum
        after 3 independent confirmations; push-pull every 30 s scaled by cluster size;
        failed members re-joined every 30 s and remembered 24 h (serf's reconnect), so
        partitions heal; after a join, up to 16 push-pulls with random members every ~0.5 s
        while the view grows (cold starts); push-pull stretched to keep a node's share of
        membership state exchanges at most 1,500 B/s (changes nothing below ~2,000 members
        unsigned).
        """
        return cls()

    @classmethod
    def wan(cls) -> SwimConfig:
        """WAN preset: memberlist's DefaultWANConfig timings plus re-joins.

        probe 5 s / timeout 3 s, 3 indirect checks, gossip 500 ms to 4 members, gossip to
        the dead 60 s, suspicion_min = 6 * max(1, log10 n) * 5 s, push-pull every 60 s
        scaled by size, re-join a failed member every 60 s, join push-pulls every 2 s.
        """
        return replace(cls(), indirect_checks=3, probe_interval_s=5.0, probe_timeout_s=3.0,
                       gossip_interval_s=0.5, gossip_nodes=4, gossip_to_dead_s=60.0,
                       suspicion_mult=6.0, push_pull_interval_s=60.0,
                       reconnect_interval_s=60.0, join_sync_interval_s=2.0)

    @classmethod
    def local(cls) -> SwimConfig:
        """Loopback / single host preset: memberlist's DefaultLocalConfig timings.

        probe 1 s / timeout 200 ms, 1 indirect check, gossip 100 ms, retransmit
        2 * ceil(log10(n+1)), suspicion_min = 3 * max(1, log10 n) * 1 s, push-pull every
        15 s scaled by size, gossip to the dead 15 s, re-join a failed member every 10 s.
        """
        return replace(cls(), probe_timeout_s=0.2, indirect_checks=1,
                       gossip_interval_s=0.1, gossip_to_dead_s=15.0, retransmit_mult=2,
                       suspicion_mult=3.0, push_pull_interval_s=15.0,
                       reconnect_interval_s=10.0)

    @classmethod
    def memberlist_lan(cls) -> SwimConfig:
        """Baseline: memberlist's DefaultLANConfig numbers, no re-join (bare memberlist).

        suspicion_min = 4 * max(1, log10 n) * 1 s (12 s at n = 1,000), maximum 6x, reached
        after SuspicionMult - 2 = 2 confirmations; partitions never heal (memberlist#222);
        a join is one push-pull per seed, nothing more; push-pull never stretched by bytes.
        """
        return replace(cls(), indirect_checks=3, suspicion_mult=4.0, suspicion_confirmations=2,
                       reconnect_interval_s=None, join_sync_rounds=0, push_pull_bytes_per_s=0.0)

    # -- formulas of the cluster size -------------------------------------------------------

    def retransmit_limit(self, n: int) -> int:
        """Transmissions of one broadcast: retransmit_mult * ceil(log10(n + 1))."""
        return retransmit_limit(self.retransmit_mult, n)

    def suspicion_min_s(self, n: int) -> float:
        """Shortest suspicion, s: suspicion_mult * max(1, log10 n) * probe_interval_s."""
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval_s

    def suspicion_max_s(self, n: int) -> float:
        """Longest suspicion, s: suspicion_max_timeout_mult * suspicion_min_s(n)."""
        return self.suspicion_max_timeout_mult * self.suspicion_min_s(n)

    def confirmations_needed(self, n: int) -> int:
        """Lifeguard k: suspicion_confirmations, or 0 if fewer peers exist (n - 2 < k)."""
        k = self.suspicion_confirmations
        return 0 if n - 2 < k else k

    def push_pull_interval_for(self, n: int) -> float:
        """Push-pull period, s, stretched by ceil(log2 n - log2 threshold) + 1 above threshold."""
        if n <= self.push_pull_scale_threshold:
            return self.push_pull_interval_s
        mult = math.ceil(math.log2(n) - math.log2(self.push_pull_scale_threshold)) + 1
        return self.push_pull_interval_s * mult


def suspicion_timeout(min_s: float, max_s: float, needed: int, confirmations: int) -> float:
    """Lifeguard's shrinking timeout, s: max falling to min after `needed` confirmations."""
    if needed <= 0:
        return min_s
    frac = math.log(confirmations + 1.0) / math.log(needed + 1.0)
    return max(min_s, max_s - frac * (max_s - min_s))


#: The presets by the name an agent's config (`[gossip] profile`) and the simulator use.
PRESETS: Mapping[str, Callable[[], SwimConfig]] = {
    "lan": SwimConfig.lan, "wan": SwimConfig.wan, "local": SwimConfig.local}
