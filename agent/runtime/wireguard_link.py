"""The agent's WireGuard side: its key pair, what it publishes, and the peers of its interface.

Owns `WireGuardLink`: made at build time (`open_wireguard`: the probe, the private key in
`<state_dir>/wireguard.key` made on first start with mode 0600, the tunnel address derived
from the underlay address), it publishes (`published`) what goes into our gossip meta, and its
service (`run`) brings the interface up once this host knows an encrypted network, then keeps
its peers equal to `underlay.wireguard_peers.wanted_peers` of the alive members' published
keys (a member that leaves or dies loses its peer). The kernel's peers are re-read every
`RESYNC_PERIOD`; between reads the changes are applied against what we last applied.

Rules: a failed command is logged and counted and retried at the next step; the interface is
left up when the agent stops (traffic of encrypted networks keeps flowing across a restart).
May import: agent.*, underlay, trio, the standard library.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from underlay.wireguard import (
    WireGuardError,
    WireGuardInterface,
    WireGuardSupport,
    interface_name,
    load_private_key,
    probe_wireguard,
    public_key_of,
)
from underlay.wireguard_peers import (
    DEFAULT_PORT,
    PublishedKey,
    WireGuardPeer,
    peer_changes,
    tunnel_address,
    wanted_peers,
    wireguard_mtu,
)

log = logging.getLogger("vxmesh.wireguard")

STEP_PERIOD = 0.25  # s between peer steps
RESYNC_PERIOD = 10.0  # s between reads of the kernel's peers


@dataclass(frozen=True)
class WireGuardStatistics:
    backend: str | None  # "kernel", "wireguard-go", None: not available
    missing: str
    interface: str | None  # its name once up
    tunnel: str | None
    peers: int
    peer_changes: int
    failures: int


class WireGuardLink:
    """This host's WireGuard key pair, tunnel address and interface (see the module doc)."""

    def __init__(self, node: str, support: WireGuardSupport, key_path: Path,
                 underlay_address: str, underlay_mtu: int) -> None:
        self.node = node
        self.support = support
        self.key_path = key_path
        self.public_key: str | None = None
        self.tunnel = tunnel_address(underlay_address)
        self.underlay_address = underlay_address
        if support.backend is not None:
            self.public_key = public_key_of(load_private_key(key_path))
        self.interface: WireGuardInterface | None = None
        if support.backend is not None:
            self.interface = WireGuardInterface(
                interface_name(node), support.backend, key_path, DEFAULT_PORT, self.tunnel,
                wireguard_mtu(underlay_mtu, underlay_address))
        self._up = False
        self._applied: dict[str, WireGuardPeer] = {}
        self._changes = 0
        self._failures = 0
        self._problems: tuple[str, ...] = ()

    def published(self) -> PublishedKey | None:
        """Our WireGuard side for the gossip meta (None when this host cannot encrypt)."""
        if self.public_key is None:
            return None
        return PublishedKey(self.node, self.underlay_address, self.public_key, self.tunnel,
                            DEFAULT_PORT)

    def public_key_bytes(self) -> bytes:
        """Our public key for the etcd node record (b"" when this host cannot encrypt)."""
        return b"" if self.public_key is None else base64.b64decode(self.public_key)

    def up_tunnel(self) -> str | None:
        """Our tunnel address while the interface is up (the local VTEP of encrypted nets)."""
        return self.tunnel if self._up else None

    def statistics(self) -> WireGuardStatistics:
        return WireGuardStatistics(
            backend=self.support.backend, missing=self.support.missing,
            interface=self.interface.name if self._up and self.interface else None,
            tunnel=self.up_tunnel(), peers=len(self._applied), peer_changes=self._changes,
            failures=self._failures)

    async def run(self, wanted: Callable[[], bool], members: Callable[[], Iterable[PublishedKey]],
                  on_up: Callable[[], None], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: once `wanted()` (an encrypted network is known), bring the
        interface up (then `on_up()`), and keep its peers those of `members()`."""
        task_status.started()
        if self.interface is None:
            return
        last_read = -RESYNC_PERIOD
        while True:
            try:
                if not self._up and wanted():
                    created = await self.interface.up()
                    log.info("wireguard: interface %s %s (%s, tunnel %s)", self.interface.name,
                             "created" if created else "adopted", self.support.backend,
                             self.tunnel)
                    self._up = True
                    on_up()
                if self._up:
                    now = trio.current_time()
                    if now - last_read >= RESYNC_PERIOD:
                        self._applied = await self.interface.peers()
                        last_read = now
                    await self._step(members())
            except WireGuardError as exc:
                self._failures += 1
                log.warning("wireguard: %s", exc)
                last_read = -RESYNC_PERIOD
            await trio.sleep(STEP_PERIOD)

    async def _step(self, members: Iterable[PublishedKey]) -> None:
        assert self.interface is not None and self.public_key is not None
        wanted = wanted_peers(members, self.node, self.public_key)
        for problem in set(wanted.problems) - set(self._problems):
            log.warning("wireguard: %s", problem)
        self._problems = wanted.problems
        changes = peer_changes(self._applied, wanted.peers)
        for peer in changes.put:
            await self.interface.put_peer(peer)
            self._applied[peer.public_key] = peer
            self._changes += 1
            log.info("wireguard: peer %s at %s (tunnel %s)", peer.public_key, peer.endpoint,
                     peer.tunnel)
        for key in changes.remove:
            await self.interface.remove_peer(key)
            self._applied.pop(key, None)
            self._changes += 1
            log.info("wireguard: peer %s removed", key)


async def open_wireguard(node: str, state_dir: Path, underlay_address: str,
                         underlay_mtu: int) -> WireGuardLink:
    """The probe, then the link (the key pair is made on first start when WireGuard is here)."""
    support = await probe_wireguard()
    link = WireGuardLink(node, support, state_dir / "wireguard.key", underlay_address,
                         underlay_mtu)
    if support.backend is None:
        log.info("wireguard: not available (missing %s); encrypted networks refused",
                 support.missing)
    else:
        log.info("wireguard: %s, public key %s, tunnel %s", support.backend, link.public_key,
                 link.tunnel)
    return link
