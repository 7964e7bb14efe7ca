"""The agent's side of gossip: the SWIM node, the neighbor table riding on it, the keyring file.

Owns: building the `Swim` core (preset from `gossip.profile`, node meta carrying our VTEP, the
keyring from the keyring file), running the gossip shell (`gossip.node`), feeding membership
events to the neighbor table's delegate, the host-liveness probes of doubted members
(`overlay.liveness` run by `agent.runtime.host_probe`): a failed member whose host still
answers keeps its entries ("agent down") for `dataplane.agent_down_grace`; handing every table
event to the agent and telling it each member's forwarding VTEP when it changes (meta decoded
once per membership event; the agent's pipeline only records changes: gossip never waits on the
kernel), joining seeds (configured, then etcd's node registry) until a peer answers, then
re-reading the registry (`seed_refresh_after`: every 5 s, doubling to 30 s while every
registered node is already an alive member, so an idle agent reads etcd twice a minute, not
twelve times), the members view, the gossip part of the metrics snapshot, key rotation
(validated, written to the keyring file, then used), and the node's identity (`gossip.sign`):
the Ed25519 key from the state directory, the cache of other nodes' public keys, filled from
etcd's node records: once at start, then whenever the core asks for a name it does not know
(one range read per round, at most every `KEY_FETCH_PERIOD`; a name etcd lacks is asked
`KEY_FETCH_ATTEMPTS` times, then released). While etcd is unreachable the keys already known
keep working. The API sees key fingerprints only, never key material.

May import: gossip, overlay, agent.*, trio, the standard library.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from agent.config import AgentConfig, AgentConfigError
from agent.errors import GossipKeyError
from agent.runtime.host_probe import HostProber
from agent.state_files import KeyringFile, load_identity_key, load_keyring, save_keyring
from gossip.config import PRESETS
from gossip.identity import KeyCache, Signer, Verdict, key_fingerprint
from gossip.keyring import Keyring, KeyringError, fingerprint
from gossip.node import GossipNode, Subscription
from gossip.swim import (
    Member,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MembershipEvent,
    MemberSuspected,
)
from gossip.wire import MemberState
from overlay.dissemination import TableDelegate
from overlay.liveness import (
    KEPT,
    HostLiveness,
    HostVerdict,
    LivenessConfig,
    LivenessError,
    VerdictChanged,
)
from overlay.table import NeighborTable, TableEvent
from underlay.wireguard_peers import PublishedKey

log = logging.getLogger("vxmesh.gossip")

META_VERSION = 1
STATE_NAMES = {MemberState.ALIVE: "alive", MemberState.SUSPECT: "suspect",
               MemberState.DEAD: "dead", MemberState.LEFT: "left"}
SEED_RETRY = 1.0
#: s. Once joined, the registry is read again after SEED_REFRESH_MIN, the pause doubling up to
#: SEED_REFRESH_MAX while it names nobody we do not see alive (each read is an etcd round trip
#: and wakes grpc's threads: 12 reads a minute were a fifth of an idle agent's CPU).
SEED_REFRESH_MIN = 5.0
SEED_REFRESH_MAX = 30.0


def seed_refresh_after(previous: float, *, synced: bool, joined_someone: bool) -> float:
    """Seconds until the next look at the seeds: SEED_RETRY until a peer answered; then
    SEED_REFRESH_MIN after a look that found a seed to join (two groups that started apart
    merge within seconds), doubling from `previous` up to SEED_REFRESH_MAX otherwise."""
    if not synced:
        return SEED_RETRY
    if joined_someone:
        return SEED_REFRESH_MIN
    return min(max(previous * 2, SEED_REFRESH_MIN), SEED_REFRESH_MAX)


def encode_meta(vtep: str, wireguard: Sequence[PublishedKey] = ()) -> bytes:
    """Node meta: what peers need to reach our endpoints (well inside 512 bytes), with our
    WireGuard public key, tunnel address and port when this host can encrypt ("wg": the one
    our traffic uses; "wg2": a second one while a key rotation overlaps them, with "next":
    true while it is the new key being prepared)."""
    meta: dict[str, Any] = {"v": META_VERSION, "vtep": vtep}
    for name, published in zip(("wg", "wg2"), wireguard, strict=False):
        meta[name] = {"key": published.public_key, "tunnel": published.tunnel,
                      "port": published.port}
        if published.preparing:
            meta[name]["next"] = True
    return json.dumps(meta, separators=(",", ":")).encode()


def wireguard_keys_of(member: Member) -> list[PublishedKey]:
    """The WireGuard sides a member publishes in its meta, the one its traffic uses first
    (none when absent or malformed)."""
    meta = decode_meta(member.meta)
    vtep = meta.get("vtep")
    out: list[PublishedKey] = []
    for name in ("wg", "wg2"):
        wg = meta.get(name)
        if not isinstance(wg, dict) or not isinstance(vtep, str):
            break
        key, tunnel, port = wg.get("key"), wg.get("tunnel"), wg.get("port")
        if not isinstance(key, str) or not isinstance(tunnel, str) or not isinstance(port, int):
            break
        out.append(PublishedKey(member.name, vtep, key, tunnel, port, wg.get("next") is True))
    return out


def wireguard_of(member: Member) -> PublishedKey | None:
    """The WireGuard side a member's traffic uses (None: none, or malformed)."""
    keys = wireguard_keys_of(member)
    return keys[0] if keys else None


def decode_meta(meta: bytes) -> dict[str, Any]:
    """Peer meta to a dict; garbage gives {} (a peer's bad meta never crashes us)."""
    try:
        value = json.loads(meta)
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class GossipMetrics:
    """The gossip part of a metrics snapshot."""

    members_by_state: dict[str, int]
    messages: dict[tuple[str, str], int]
    bytes: dict[tuple[str, str], int]
    dropped: dict[str, int]
    health_score: int
    agent_down: int = 0
    host_probes: dict[str, int] = field(default_factory=dict)


def read_keyring(config: AgentConfig) -> KeyringFile | None:
    """The keyring the config asks for: None when encryption is off; GossipKeyError when
    missing (StateReadError when damaged)."""
    if not config.gossip.encrypt:
        return None
    keyring = load_keyring(config.keyring_path)
    if keyring is None:
        raise GossipKeyError(
            f"gossip.encrypt is true but there is no keyring at {config.keyring_path}; write "
            f'{{"primary": "KEY", "keys": ["KEY"]}} there, KEY being one `vxmesh keys generate`'
            " shared by every node (or set gossip.encrypt = false)")
    return keyring


#: s. How often pending public-key look-ups are sent to etcd (one range read each time).
KEY_FETCH_PERIOD = 0.5
#: s. The longest the table's timer loop sleeps without a change (its deadline is re-read
#: after every change of the table).
TABLE_TIMER_CAP = 60.0
#: Rounds a name etcd has no key for is looked up before it is released.
KEY_FETCH_ATTEMPTS = 20


@dataclass(frozen=True)
class NodeIdentity:
    """Our signing key and the trusted public keys of the others (see the module doc)."""

    signer: Signer
    keys: KeyCache

    def check_record(self, owner: str, signature: bytes, data: bytes) -> bool | None:
        """The table's signature check: True valid, False forged, None key not known yet."""
        verdict = self.keys.check(owner, b"", signature, data)
        return None if verdict is Verdict.UNKNOWN_KEY else verdict is Verdict.VALID


def load_identity(config: AgentConfig, node: str) -> NodeIdentity | None:
    """Our identity when `gossip.sign` is on (the key is created on first start), else None."""
    if not config.gossip.sign:
        return None
    signer = Signer(load_identity_key(config.identity_path))
    return NodeIdentity(signer, KeyCache({node: signer.public_key}))


def vtep_of(member: Member) -> str | None:
    """The VTEP a member advertises in its meta (None if its meta has none)."""
    vtep = decode_meta(member.meta).get("vtep")
    return vtep if isinstance(vtep, str) else None


class AgentTableDelegate(TableDelegate):
    """The table's delegate, telling the agent about every table change as it happens."""

    def __init__(self, table: NeighborTable, on_change: Callable[[TableEvent], None], *,
                 now: float, liveness: HostLiveness) -> None:
        super().__init__(table, now=now, liveness=liveness, vtep_of=vtep_of)
        self.on_change = on_change
        self.moved = trio.Event()  # set after any change: the table's deadline may move

    def has_broadcasts(self) -> bool:
        """The optional half of the delegate protocol (`gossip.delegate`): the core's gossip
        timer sleeps while nothing is queued; table writes wake it (`table.on_outgoing`)."""
        return self.pending_broadcasts()

    def drain_events(self) -> None:
        self.moved.set()
        while (event := self.table.next_event()) is not None:
            self.on_change(event)

    def notify_user_msg(self, payload: bytes, now: float) -> None:
        try:
            super().notify_user_msg(payload, now)
        finally:
            self.drain_events()

    def merge_remote_state(self, chunk: bytes, join: bool, now: float) -> None:
        try:
            super().merge_remote_state(chunk, join, now)
        finally:
            self.drain_events()

    def keys_learned(self, now: float) -> None:
        super().keys_learned(now)
        self.drain_events()

    def handle_timeout(self, now: float) -> None:
        super().handle_timeout(now)
        self.drain_events()


class GossipLink:
    """One SWIM node carrying this agent's neighbor table."""

    def __init__(self, config: AgentConfig, node: str, vtep: str, table: NeighborTable, *,
                 on_change: Callable[[TableEvent], None],
                 wireguard: Sequence[PublishedKey] = (),
                 on_member: Callable[[str, str | None, str | None], None] = (
                     lambda name, vtep, tunnel: None),
                 on_membership: Callable[[], None] = lambda: None,
                 extra_seeds: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None,
                 identity: NodeIdentity | None = None,
                 public_keys: Callable[[], Awaitable[dict[str, bytes]]] | None = None
                 ) -> None:
        """`identity` (see `load_identity`) turns on signing; `public_keys` reads every
        registered node's public key from etcd."""
        self.config = config
        self.node = node
        self.vtep = vtep
        self.table = table
        self.extra_seeds = extra_seeds
        self.identity = identity
        self.public_keys = public_keys
        self.on_member = on_member
        self.on_membership = on_membership  # after every membership event (never blocks)
        # Alive and suspect members (not us) -> (VTEP, WireGuard tunnel address or None).
        self._alive_vteps: dict[str, tuple[str, str | None]] = {}
        self._forwarding: dict[str, tuple[str, str | None]] = {}  # what `on_member` was told
        self.keyring_file = read_keyring(config)
        self.keyring = self._keyring(self.keyring_file)
        dataplane = config.dataplane
        try:
            liveness = LivenessConfig(
                grace=dataplane.agent_down_grace, probe_interval=dataplane.host_probe_interval,
                host_timeout=dataplane.host_timeout)
        except LivenessError as exc:
            raise AgentConfigError(f"dataplane.{exc}") from None
        self.liveness = HostLiveness(liveness)
        self.delegate = AgentTableDelegate(table, on_change, now=trio.current_time(),
                                           liveness=self.liveness)
        self.prober = HostProber(self.liveness, vtep, on_change=self._verdicts_changed)
        self.gossip = GossipNode(PRESETS[config.gossip.profile](), node,
                                 (vtep, config.gossip.port), meta=encode_meta(vtep, wireguard),
                                 keyring=self.keyring, delegate=self.delegate,
                                 signer=None if identity is None else identity.signer,
                                 keys=None if identity is None else identity.keys)
        # A table write (an endpoint made or removed here, a refutation) arms the gossip
        # timer, which otherwise sleeps while nothing is queued.
        table.on_outgoing = self.gossip.delegate_has_news
        self._synced = trio.Event()
        self._keys_wanted = trio.Event()
        self._running = False

    @staticmethod
    def _keyring(keys: KeyringFile | None) -> Keyring | None:
        if keys is None:
            return None
        return Keyring(list(keys.keys), keys.primary, clock=time.time)

    # -- membership events --------------------------------------------------------------------

    def handle_event(self, event: MembershipEvent) -> None:
        """A membership event from the core: feed host liveness and the table's owner rules
        through the delegate (cheap); a suspicion or failure has the prober start at once."""
        member = event.member
        if member.name == self.node:
            return
        self._note_member(member)
        if isinstance(event, MemberJoined | MemberRecovered):
            self._synced.set()
            if self.liveness.verdict(member.name) in KEPT:
                log.info("member %s: its agent is back", member.name)
        elif isinstance(event, MemberFailed | MemberLeft):
            log.info("member %s %s", member.name,
                     "failed" if isinstance(event, MemberFailed) else "left")
        verdicts = self.delegate.member_event(event, trio.current_time())
        self._log_verdicts(verdicts)
        if isinstance(event, MemberSuspected | MemberFailed):
            self.prober.wake()
        self.delegate.drain_events()
        self._tell_forwarding([member.name, *(change.name for change in verdicts)])
        self.on_membership()

    def _verdicts_changed(self) -> None:
        """The prober moved liveness verdicts: apply them to the table (never blocks)."""
        verdicts = self.delegate.apply_verdicts(trio.current_time())
        self._log_verdicts(verdicts)
        self.delegate.drain_events()
        self._tell_forwarding([change.name for change in verdicts])

    def _note_member(self, member: Member) -> None:
        """Record an alive or suspect member's VTEP and tunnel address (its meta decoded once
        per event); forget any other."""
        vtep = vtep_of(member)
        if member.state in (MemberState.ALIVE, MemberState.SUSPECT) and vtep is not None:
            published = wireguard_of(member)
            self._alive_vteps[member.name] = (vtep, published.tunnel if published else None)
        else:
            self._alive_vteps.pop(member.name, None)

    def _tell_forwarding(self, names: list[str]) -> None:
        """Tell `on_member` the forwarding VTEP (and tunnel address) of each of `names` that
        changed: alive and suspect members', and failed members' whose host still forwards
        (kept by liveness; no tunnel then, as `published_wireguard` has none for them)."""
        kept = self.liveness.kept() if names else {}
        for name in names:
            forwarding = self._alive_vteps.get(name)
            if forwarding is None and name in kept:
                forwarding = (kept[name], None)
            if self._forwarding.get(name) == forwarding:
                continue
            if forwarding is None:
                del self._forwarding[name]
                self.on_member(name, None, None)
            else:
                self._forwarding[name] = forwarding
                self.on_member(name, *forwarding)

    def _recount_members(self) -> None:
        """Re-read every member (at start, and when the subscription overflowed)."""
        self._alive_vteps = {}
        for member in self.gossip.members():
            if member.name != self.node:
                self._note_member(member)
        self._tell_forwarding(sorted(self._alive_vteps.keys() | self._forwarding.keys()))

    @staticmethod
    def _log_verdicts(changes: list[VerdictChanged]) -> None:
        for change in changes:
            (log.info if change.current is HostVerdict.CHECKING else log.warning)(
                "member %s: %s (%s at %s): its entries %s", change.name, change.current.value,
                change.reason, change.vtep, "stay" if change.current in KEPT
                else "are withdrawn")

    # -- the service --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Gossip until cancelled (or left): the node, its events, table timers, joining."""
        if self.identity is not None:
            with trio.move_on_after(2.0):  # etcd away: keys are fetched when claims need them
                await self._learn_keys(set())
        async with trio.open_nursery() as nursery:
            await nursery.start(self.gossip.run)
            self._running = True
            if self.identity is not None:
                nursery.start_soon(self._fetch_keys)
            subscription = self.gossip.subscribe(capacity=4096)
            # Members that joined before the subscription existed raised no event for us.
            self._recount_members()
            await nursery.start(self.prober.run)
            nursery.start_soon(self._consume, subscription)
            nursery.start_soon(self._drive_table)
            nursery.start_soon(self._join_until_answered)
            task_status.started()

    async def _learn_keys(self, wanted: set[str]) -> set[str] | None:
        """One etcd read: learn every registered key; the `wanted` names found, None if etcd
        could not be read."""
        assert self.identity is not None
        if self.public_keys is None:
            return set()
        try:
            found = await self.public_keys()
        except Exception as exc:  # etcd away: keys already known keep working
            log.debug("public keys: etcd unreachable: %s", exc)
            return None
        keys = self.identity.keys
        known = keys.known()
        changed = False
        for name, key in found.items():
            if known.get(name) != key:
                keys.learn(name, key)
                changed = True
        if changed and self._running:
            self.gossip.keys_learned()
            self.delegate.keys_learned(trio.current_time())
        return wanted & found.keys()

    async def _fetch_keys(self) -> None:
        """Look up the public keys the core asked for (see the module docstring)."""
        assert self.identity is not None
        keys = self.identity.keys
        keys.on_wanted = lambda: self._keys_wanted.set()
        pending: dict[str, int] = {}
        while True:
            self._keys_wanted = trio.Event()  # before draining: a name queued after is seen
            for name in keys.wanted():
                pending.setdefault(name, 0)
            if not pending:  # nothing to look up: sleep until the core asks
                await self._keys_wanted.wait()
                continue
            found: set[str] | None = None
            with trio.move_on_after(2.0):
                found = await self._learn_keys(set(pending))
            if found is not None:
                for name in list(pending):
                    pending[name] += 1
                    if name in found or pending[name] >= KEY_FETCH_ATTEMPTS:
                        del pending[name]
                        if name not in found:
                            keys.release(name)
            await trio.sleep(KEY_FETCH_PERIOD)

    async def _consume(self, subscription: Subscription) -> None:
        missed = 0
        async for event in subscription:
            if subscription.dropped != missed:
                log.warning("%d membership events were lost (consumer too slow); re-reading "
                            "every member", subscription.dropped - missed)
                missed = subscription.dropped
                self._recount_members()
            self.handle_event(event)

    async def _drive_table(self) -> None:
        """The table's own timers (tombstone reaping, failed owners' grace)."""
        while True:
            self.delegate.moved = trio.Event()
            with trio.move_on_at(min(self.delegate.next_deadline(),
                                     trio.current_time() + TABLE_TIMER_CAP)):
                await self.delegate.moved.wait()  # a change may bring the deadline closer
            if trio.current_time() >= self.delegate.next_deadline():
                self.delegate.handle_timeout(trio.current_time())

    async def _join_until_answered(self) -> None:
        """Join seeds (configured, then etcd's registry) that are not alive members yet.

        Until one answers we retry every second; afterwards every 5 to 30 s
        (`seed_refresh_after`), so two groups that started apart (nobody up yet when each
        joined) still become one cluster.
        """
        pause = SEED_RETRY
        while True:
            alive = {m.addr for m in self.gossip.members()
                     if m.name != self.node and m.state == MemberState.ALIVE}
            if alive:
                self._synced.set()
            seeds = [seed for seed in await self.seeds() if seed not in alive]
            if not seeds and not self._synced.is_set():
                log.info("no gossip seeds known yet; running alone for now")
                self._synced.set()
            if seeds:
                started = trio.current_time()
                answered = await self.gossip.join(seeds)
                took = trio.current_time() - started
                if answered:
                    log.info("joined through %d of %d seeds in %.2f s", answered, len(seeds),
                             took)
                    self._synced.set()
                elif not alive:
                    log.info("join: none of %s answered (%.2f s); retrying", seeds, took)
            pause = seed_refresh_after(pause, synced=self._synced.is_set(),
                                       joined_someone=bool(seeds))
            await trio.sleep(pause)

    async def sync_network(self, network: str) -> int:
        """Bulk sync after joining `network` (Docker's NetworkDB does the same): push-pull with
        up to three alive peers taking part in it, so its existing endpoints, whose broadcasts
        we dropped as out of scope before joining, arrive now. Returns how many answered."""
        peers = [m for m in self.gossip.members()
                 if m.name != self.node and m.state == MemberState.ALIVE]
        in_network = set(self.table.network_peers(network))
        peers.sort(key=lambda m: (m.name not in in_network, m.name))
        if not peers:
            return 0
        return await self.gossip.join([m.addr for m in peers[:3]])

    async def leave(self) -> None:
        """Graceful leave: peers mark us left at once and drop our entries."""
        if self._running:
            await self.gossip.leave(timeout_s=2.0)

    async def wait_initial_sync(self) -> None:
        """Return once a peer answered our join (its full state is merged), at once if alone."""
        await self._synced.wait()

    def records_changed(self) -> None:
        """Local table writes happened: let the agent see the events now."""
        self.delegate.drain_events()

    # -- seeds ----------------------------------------------------------------------------------

    async def seeds(self) -> list[tuple[str, int]]:
        from agent.config import parse_hostport

        own = (self.vtep, self.config.gossip.port)
        found = [parse_hostport(s, key="gossip.seeds") for s in self.config.gossip.seeds]
        if self.extra_seeds is not None:
            with trio.move_on_after(1.0):  # etcd slow or away: configured seeds only
                try:
                    found += await self.extra_seeds()
                except Exception as exc:
                    log.debug("no seeds from etcd: %s", exc)
        unique = []
        for seed in found:
            if seed != own and seed not in unique:
                unique.append(seed)
        return unique

    # -- views ------------------------------------------------------------------------------

    @staticmethod
    def _member_json(member: Member) -> dict[str, Any]:
        return {"name": member.name, "address": f"{member.addr[0]}:{member.addr[1]}",
                "state": STATE_NAMES.get(member.state, str(member.state)),
                "incarnation": member.incarnation,
                "vtep": decode_meta(member.meta).get("vtep"),
                "wireguard": [k.public_key for k in wireguard_keys_of(member)]}

    def members(self) -> list[dict[str, Any]]:
        """Every member with its state; `host` is the liveness verdict about a doubted one
        ("suspect", "checking", "agent down", "withdrawn"), None for the others."""
        if not self._running:
            return []
        rows = []
        for member in sorted(self.gossip.members(), key=lambda m: m.name):
            verdict = self.liveness.verdict(member.name)
            if member.state == MemberState.ALIVE:
                verdict = None
            rows.append({**self._member_json(member),
                         "host": verdict.value if verdict is not None else None,
                         "agent_down": verdict is HostVerdict.AGENT_DOWN})
        return rows

    def agent_down(self) -> list[str]:
        """Members whose agent failed while their host forwards: their entries are kept."""
        return sorted(name for name in self.liveness.kept()
                      if self.liveness.verdict(name) is HostVerdict.AGENT_DOWN)

    def forwarding(self) -> dict[str, tuple[str, str | None]]:
        """Members whose endpoints our data plane reaches -> (VTEP, WireGuard tunnel address or
        None), as `on_member` was told: alive and suspect ones, and failed ones whose host still
        forwards (kept)."""
        return dict(self._forwarding)

    def published_wireguard(self) -> list[PublishedKey]:
        """The WireGuard sides of the alive and suspect members (ourselves included)."""
        if not self._running:
            return []
        out = []
        for member in self.gossip.members():
            if member.state in (MemberState.ALIVE, MemberState.SUSPECT):
                out.extend(wireguard_keys_of(member))
        return out

    def set_wireguard(self, keys: Sequence[PublishedKey]) -> None:
        """Publish our WireGuard sides (a key rotation): new meta, spread with a new
        incarnation."""
        self.gossip.set_meta(encode_meta(self.vtep, keys))

    def take_probe_rtts(self) -> list[float]:
        """Probe round trips (seconds) since the last call; none while gossip is stopped."""
        return self.gossip.take_probe_rtts() if self._running else []

    def metrics(self) -> GossipMetrics:
        if not self._running:
            return GossipMetrics({}, {}, {}, {}, 0)
        stats = self.gossip.statistics()
        table = self.delegate.statistics()
        echo = self.prober.statistics()
        swim = stats.swim
        direction = {"in": "received", "out": "sent"}
        messages = {(kind, direction.get(way, way)): n
                    for (way, kind), n in stats.transport.packets.items()}
        messages[("table_record", "sent")] = table.broadcasts_sent
        messages[("table_message", "received")] = table.user_msgs
        messages[("probe", "sent")] = swim.probes_sent
        messages[("indirect_probe", "sent")] = swim.indirect_pings_sent
        return GossipMetrics(
            members_by_state={"alive": swim.members_alive + 1, "suspect": swim.members_suspect,
                              "dead": swim.members_failed, "left": swim.members_left},
            messages=messages,
            bytes={(kind, direction.get(way, way)): n
                   for (way, kind), n in stats.transport.bytes.items()},
            dropped={"decode": 0, "auth": 0, "size": 0, **stats.dropped},
            health_score=swim.awareness,
            agent_down=len(self.agent_down()),
            host_probes={"sent": echo.sent, "answered": echo.replies,
                         "send_failed": echo.send_errors},
        )

    # -- keys -------------------------------------------------------------------------------

    def keys_json(self) -> dict[str, Any]:
        """Fingerprints only (first 8 hex digits of each key's SHA-256), never key material."""
        identity = (None if self.identity is None
                    else key_fingerprint(self.identity.signer.public_key))
        if self.keyring is None:
            return {"primary": None, "keys": [], "encrypt": False, "identity": identity}
        installed = self.keyring.keys()
        return {"primary": fingerprint(self.keyring.primary),
                "keys": [fingerprint(k) for k in installed], "encrypt": True,
                "identity": identity}

    def change_key(self, action: str, key: bytes) -> None:
        """install / use / remove: validated on a copy, written to the file, then used."""
        if self.keyring is None:
            raise GossipKeyError("gossip.encrypt is false on this node: there is no keyring")
        candidate = Keyring(self.keyring.keys(), self.keyring.primary)
        try:
            getattr(candidate, action)(key)
        except KeyringError as exc:
            raise GossipKeyError(f"key: {exc}") from None
        saved = KeyringFile(candidate.primary, tuple(candidate.keys()))
        save_keyring(self.config.keyring_path, saved)
        self.keyring_file = saved
        getattr(self.keyring, action)(key)  # the live keyring: core and transport share it
        log.info("keyring: %s done; %d keys installed", action, len(saved.keys))

    def reload_keyring(self) -> None:
        """SIGHUP: bring the live keyring to what the keyring file says now."""
        keys = read_keyring(self.config)
        if keys is None or self.keyring is None:
            return
        for key in keys.keys:
            self.keyring.install(key)
        self.keyring.use(keys.primary)
        installed = self.keyring.keys()
        stale = [k for k in installed if k not in keys.keys]
        for key in stale:
            self.keyring.remove(key)
        self.keyring_file = keys
