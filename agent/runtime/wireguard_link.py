"""The agent's WireGuard side: its key pair, what it publishes, the peers of its interface, and
key rotation.

Owns `WireGuardLink`: made at build time (`open_wireguard`: the probe, the private key made on
first start with mode 0600, the tunnel address derived from the underlay address), it
publishes (`published`) what goes into our gossip meta and etcd node record, and its service
(`run`) brings the interface up once this host knows an encrypted network, then keeps its
peers equal to `underlay.wireguard_peers.wanted_peers` of the alive members' published keys
(a member that leaves or dies loses its peer). The kernel's peers are re-read every
`RESYNC_PERIOD`; between reads the changes are applied against what we last applied.
A step runs at once when something changed (`changed()`: the networks or the membership; a
rotation asked), every `STEP_PERIOD` while a rotation runs, the node record is stale or the
last step failed, and otherwise every `RESYNC_PERIOD`: an idle agent does not wake for
WireGuard in between.

Key rotation (`rotate`, `vxmesh keys rotate-wireguard`) follows
`underlay.wireguard_peers.Rotation` (prepare on a second interface slot, switch the route,
drain the old interface); `rotate` returns once the new key is the current one, the drain
goes on in the service. Files: the current slot's key in `key_file(state_dir, slot)`; a
rotation writes the new key to `pending_key_file`, and the switch deletes the old key file,
then renames the pending one. At start the slot is the one whose key file exists (a pending
file alone is a switch cut short: it is completed; a pending file next to a key file is an
unfinished rotation: it is dropped, and the interface it made is removed at bring-up).

Rules: a failed command is logged and counted and retried at the next step; the interface is
left up when the agent stops (traffic of encrypted networks keeps flowing across a restart).
May import: agent.*, underlay, trio, the standard library.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from agent.errors import AgentError
from underlay.wireguard import (
    WireGuardError,
    WireGuardInterface,
    WireGuardSupport,
    interface_name,
    key_file,
    load_private_key,
    pending_key_file,
    probe_wireguard,
    public_key_of,
    write_private_key,
)
from underlay.wireguard_peers import (
    DEFAULT_PORT,
    PREPARE_KEEPALIVE,
    PREPARE_TIMEOUT,
    SLOTS,
    PublishedKey,
    Rotation,
    WireGuardPeer,
    peer_changes,
    tunnel_address,
    wanted_peers,
    wireguard_mtu,
)

log = logging.getLogger("vxmesh.wireguard")

STEP_PERIOD = 0.25  # s between peer steps
RESYNC_PERIOD = 10.0  # s between reads of the kernel's peers


class RotationRefused(AgentError):
    """A key rotation cannot start (WireGuard missing, one already running) or was aborted."""


@dataclass(frozen=True)
class WireGuardStatistics:
    backend: str | None  # "kernel", "wireguard-go", None: not available
    missing: str
    interface: str | None  # its name once up
    tunnel: str | None
    peers: int
    peer_changes: int
    failures: int
    public_key: str | None
    port: int
    rotation: str | None  # "prepare", "drain", None: not rotating
    rotations: int  # completed since start


@dataclass(frozen=True)
class _Slot:
    """One interface slot: its key, tunnel address, port and interface."""

    number: int
    public_key: str
    tunnel: str
    port: int
    interface: WireGuardInterface


@dataclass
class _Pending:
    """A rotation asked for through `rotate`, and its outcome."""

    done: trio.Event
    result: dict[str, str] | None = None
    error: str | None = None


class WireGuardLink:
    """This host's WireGuard key pairs, tunnel addresses and interfaces (see the module doc)."""

    def __init__(self, node: str, support: WireGuardSupport, state_dir: Path,
                 underlay_address: str, underlay_mtu: int, port: int = DEFAULT_PORT) -> None:
        self.node = node
        self.support = support
        self.state_dir = state_dir
        self.port = port
        self.underlay_address = underlay_address
        self.mtu = wireguard_mtu(underlay_mtu, underlay_address)
        self.current: _Slot | None = None
        if support.backend is not None:
            slot = _resolve_key_files(state_dir)
            self.current = self._slot(slot, key_file(state_dir, slot))
        self._old: _Slot | None = None  # draining
        self._next: _Slot | None = None  # preparing
        self._rotation: Rotation | None = None
        self._asked: _Pending | None = None
        self._wake = trio.Event()
        self._up = False
        self._applied: dict[str, dict[str, WireGuardPeer]] = {}  # by interface name
        self._record_stale = False  # the etcd node record still holds an older key
        self._changes = 0
        self._failures = 0
        self._rotations = 0
        self._problems: tuple[str, ...] = ()

    def _slot(self, number: int, key_path: Path) -> _Slot:
        assert self.support.backend is not None
        tunnel = tunnel_address(self.underlay_address, number)
        return _Slot(number, public_key_of(load_private_key(key_path)), tunnel,
                     self.port + number, WireGuardInterface(
                         interface_name(self.node, number), self.support.backend, key_path,
                         self.port + number, tunnel, self.mtu))

    @property
    def public_key(self) -> str | None:
        return None if self.current is None else self.current.public_key

    def published(self) -> tuple[PublishedKey, ...]:
        """Our WireGuard sides for the gossip meta, the current one first (the one our
        encrypted networks' traffic uses); empty when this host cannot encrypt."""
        slots = [s for s in (self.current, self._next, self._old) if s is not None]
        return tuple(PublishedKey(self.node, self.underlay_address, s.public_key, s.tunnel,
                                  s.port, s is self._next) for s in slots)

    def public_key_bytes(self) -> bytes:
        """Our public key for the etcd node record (b"" when this host cannot encrypt)."""
        return b"" if self.public_key is None else base64.b64decode(self.public_key)

    def up_tunnel(self) -> str | None:
        """Our tunnel address while the interface is up (encrypted networks wait for it)."""
        return self.current.tunnel if self._up and self.current else None

    def statistics(self) -> WireGuardStatistics:
        current = self.current
        return WireGuardStatistics(
            backend=self.support.backend, missing=self.support.missing,
            interface=current.interface.name if self._up and current else None,
            tunnel=self.up_tunnel(),
            peers=len(self._applied.get(current.interface.name, {})) if current else 0,
            peer_changes=self._changes, failures=self._failures, public_key=self.public_key,
            port=current.port if current else self.port,
            rotation=self._rotation.phase if self._rotation else None,
            rotations=self._rotations)

    def changed(self) -> None:
        """The networks or the membership changed: step at once (never blocks)."""
        self._wake.set()

    async def rotate(self) -> dict[str, str]:
        """A new key pair, without a dropped packet (see the module doc); returns once the new
        key is the current one: {"public_key", "previous"}. RotationRefused says why not."""
        if self.current is None:
            raise RotationRefused(f"WireGuard is not available on this host (missing "
                                  f"{self.support.missing})")
        if self._asked is not None or self._rotation is not None:
            raise RotationRefused("a WireGuard key rotation is already running; wait for it "
                                  "(`vxmesh status`: wireguard.rotation)")
        asked = self._asked = _Pending(trio.Event())
        self._wake.set()
        await asked.done.wait()
        if asked.error is not None:
            raise RotationRefused(asked.error)
        assert asked.result is not None
        return asked.result

    async def run(self, wanted: Callable[[], bool], members: Callable[[], Iterable[PublishedKey]],
                  on_up: Callable[[], None],
                  publish: Callable[[tuple[PublishedKey, ...]], None],
                  record: Callable[[], Awaitable[bool]], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: once `wanted()` (an encrypted network is known), bring the
        interface up (then `on_up()`), keep its peers those of `members()`, and run the
        rotations asked for. `publish(keys)` puts our published keys into the gossip meta,
        `record()` rewrites the etcd node record with our current key (False: not now; it is
        retried every step until it works)."""
        task_status.started()
        if self.current is None:
            return
        last_read = -RESYNC_PERIOD
        while True:
            failed = False
            try:
                now = trio.current_time()
                if not self._up and wanted():
                    await self._bring_up()
                    on_up()
                if self._asked is not None and self._rotation is None:
                    await self._start_rotation(now, publish, on_up)
                if self._up:
                    if now - last_read >= RESYNC_PERIOD:
                        await self._read_applied()
                        last_read = now
                    await self._step(list(members()))
                if self._rotation is not None:
                    await self._advance(now, list(members()), publish, on_up)
                if self._record_stale:
                    self._record_stale = not await record()
            except WireGuardError as exc:
                self._failures += 1
                log.warning("wireguard: %s", exc)
                last_read = -RESYNC_PERIOD
                failed = True
            busy = (failed or self._rotation is not None or self._asked is not None
                    or self._record_stale)
            with trio.move_on_after(STEP_PERIOD if busy else RESYNC_PERIOD):
                await self._wake.wait()
            self._wake = trio.Event()

    # -- interfaces and peers -------------------------------------------------------------

    def _interfaces(self) -> list[tuple[_Slot, int]]:
        """The slots with an interface up, with the keepalive their peers get."""
        out = [(s, 0) for s in (self.current, self._old) if s is not None]
        if self._next is not None:
            out.append((self._next, PREPARE_KEEPALIVE))
        return out

    async def _bring_up(self) -> None:
        assert self.current is not None
        created = await self.current.interface.up()
        for number in range(SLOTS):  # an interface an unfinished rotation left
            if number != self.current.number:
                await self._slot_interface(number).delete()
        log.info("wireguard: interface %s %s (%s, tunnel %s, port %d)",
                 self.current.interface.name, "created" if created else "adopted",
                 self.support.backend, self.current.tunnel, self.current.port)
        self._up = True

    def _slot_interface(self, number: int) -> WireGuardInterface:
        assert self.support.backend is not None
        return WireGuardInterface(interface_name(self.node, number), self.support.backend,
                                  key_file(self.state_dir, number), self.port + number,
                                  tunnel_address(self.underlay_address, number), self.mtu)

    async def _read_applied(self) -> None:
        for slot, _ in self._interfaces():
            self._applied[slot.interface.name] = await slot.interface.peers()

    async def _step(self, members: list[PublishedKey]) -> None:
        assert self.current is not None
        wanted = wanted_peers([m for m in members if m.node != self.node], self.node,
                              self.current.public_key)
        for problem in set(wanted.problems) - set(self._problems):
            log.warning("wireguard: %s", problem)
        self._problems = wanted.problems
        for slot, keepalive in self._interfaces():
            applied = self._applied.setdefault(slot.interface.name, {})
            peers = {k: replace(p, keepalive=max(p.keepalive, keepalive))
                     for k, p in wanted.peers.items()}
            changes = peer_changes(applied, peers)
            for peer in changes.put:
                await slot.interface.put_peer(peer)
                applied[peer.public_key] = peer
                self._changes += 1
                log.info("wireguard: %s: peer %s at %s (tunnel %s)", slot.interface.name,
                         peer.public_key, peer.endpoint, peer.tunnel)
            for key in changes.remove:
                await slot.interface.remove_peer(key)
                applied.pop(key, None)
                self._changes += 1
                log.info("wireguard: %s: peer %s removed", slot.interface.name, key)

    # -- rotation -------------------------------------------------------------------------

    async def _start_rotation(self, now: float, publish: Callable[[tuple[PublishedKey, ...]],
                                                                  None],
                              on_up: Callable[[], None]) -> None:
        assert self.current is not None
        number = (self.current.number + 1) % SLOTS
        pending = pending_key_file(self.state_dir, number)
        write_private_key(pending)
        self._next = self._slot(number, pending)
        self._rotation = Rotation(started=now)
        log.info("wireguard: rotation: new key %s on %s (port %d, tunnel %s)",
                 self._next.public_key, self._next.interface.name, self._next.port,
                 self._next.tunnel)
        if self._up:
            await self._next.interface.up(route=False)
            self._applied[self._next.interface.name] = {}
            publish(self.published())
        else:  # no interface to overlap with: the new key is current at once
            await self._switch(now, publish, on_up)
            self._finish()

    async def _advance(self, now: float, members: list[PublishedKey],
                       publish: Callable[[tuple[PublishedKey, ...]], None],
                       on_up: Callable[[], None]) -> None:
        rotation = self._rotation
        assert rotation is not None and self.current is not None
        if self._next is not None:
            wanted = wanted_peers([m for m in members if m.node != self.node], self.node,
                                  self.current.public_key).peers
            readings = await self._next.interface.readings()
            waiting = rotation.waiting_for(
                wanted, [k for k, r in readings.items() if r.latest_handshake > 0])
            if not waiting:
                await self._switch(now, publish, on_up)
            elif rotation.expired(now):
                await self._abort(waiting, publish)
            return
        assert self._old is not None
        readings = await self._old.interface.readings()
        rotation.observe_old(now, {k: r.received for k, r in readings.items()})
        if rotation.drained(now):
            await self._old.interface.delete()
            self._applied.pop(self._old.interface.name, None)
            log.info("wireguard: rotation done: %s removed", self._old.interface.name)
            self._old = None
            self._finish()
            publish(self.published())

    async def _switch(self, now: float, publish: Callable[[tuple[PublishedKey, ...]], None],
                      on_up: Callable[[], None]) -> None:
        """The new key becomes the current one: route, key files, gossip meta, etcd record."""
        old, new = self.current, self._next
        assert old is not None and new is not None and self._rotation is not None
        if self._up:
            await new.interface.route()
        key_file(self.state_dir, old.number).unlink(missing_ok=True)
        os.replace(pending_key_file(self.state_dir, new.number),
                   key_file(self.state_dir, new.number))
        self.current = replace(new, interface=self._slot_interface(new.number))  # its key file
        self._next = None
        self._old = old if self._up else None
        self._rotation.switched(now)
        self._record_stale = True
        publish(self.published())
        on_up()  # our tunnel address changed
        log.info("wireguard: rotation: switched to %s (key %s); old key %s drains on %s",
                 self.current.interface.name, self.current.public_key, old.public_key,
                 old.interface.name)
        if self._asked is not None:
            self._asked.result = {"public_key": new.public_key, "previous": old.public_key,
                                  "interface": self.current.interface.name,
                                  "tunnel": new.tunnel, "port": str(new.port)}
            self._asked.done.set()
            self._asked = None

    async def _abort(self, waiting: list[str],
                     publish: Callable[[tuple[PublishedKey, ...]], None]) -> None:
        assert self._next is not None
        await self._next.interface.delete()
        self._applied.pop(self._next.interface.name, None)
        pending_key_file(self.state_dir, self._next.number).unlink(missing_ok=True)
        self._next = None
        self._rotation = None
        publish(self.published())
        message = (f"no handshake with the new key within {PREPARE_TIMEOUT:.0f} s from peer(s)"
                   f" {', '.join(waiting)}; the rotation is undone, the old key stays")
        log.warning("wireguard: rotation: %s", message)
        if self._asked is not None:
            self._asked.error = message
            self._asked.done.set()
            self._asked = None

    def _finish(self) -> None:
        self._rotation = None
        self._rotations += 1


def _resolve_key_files(state_dir: Path) -> int:
    """The current slot (see the module doc), completing a switch cut short."""
    keys = [n for n in range(SLOTS) if key_file(state_dir, n).exists()]
    pending = [n for n in range(SLOTS) if pending_key_file(state_dir, n).exists()]
    if keys:
        for number in pending:
            pending_key_file(state_dir, number).unlink()
            log.warning("wireguard: an unfinished rotation's key (slot %d) dropped", number)
        for number in keys[1:]:
            key_file(state_dir, number).unlink()
        return keys[0]
    if pending:
        os.replace(pending_key_file(state_dir, pending[0]), key_file(state_dir, pending[0]))
        return pending[0]
    return 0


async def open_wireguard(node: str, state_dir: Path, underlay_address: str,
                         underlay_mtu: int, port: int = DEFAULT_PORT) -> WireGuardLink:
    """The probe, then the link (the key pair is made on first start when WireGuard is here)."""
    support = await probe_wireguard()
    link = WireGuardLink(node, support, state_dir, underlay_address, underlay_mtu, port)
    if link.current is None:
        log.info("wireguard: not available (missing %s); encrypted networks refused",
                 support.missing)
    else:
        log.info("wireguard: %s, public key %s, tunnel %s, port %d", support.backend,
                 link.current.public_key, link.current.tunnel, link.current.port)
    return link
