"""The host's WireGuard interface: which implementation is here, the key pair, the commands.

Owns:
- `probe_wireguard()`: the kernel module when `ip link add ... type wireguard` works (the
  probe device is deleted at once), else Debian's `wireguard-go` (userspace, run with
  `WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1`), else none; `wg` (wireguard-tools) is
  needed by both. `WireGuardSupport.missing` names what to install.
- `load_private_key(path)`: the host's private key, made on first use (mode 0600); X25519
  through `cryptography`, base64 as `wg genkey` writes it. `write_private_key(path)` makes a
  new one. `public_key_of(private)`. `key_file(state_dir, slot)`: where a slot's key lives
  (slot 0: `wireguard.key`), `pending_key_file`: a rotation's new key until it is current.
- `interface_name(node, slot)`: `vxwg` + 8 hex digits of the node name's hash (+ the slot
  unless 0): unique on the machine, since wireguard-go's control sockets in
  /var/run/wireguard are shared by every network namespace.
- `WireGuardInterface`: brings the interface up (adopting one left by a previous run, so a
  restart drops no packet) with its tunnel address as a /32, points the route to the tunnel
  network at itself (`route`, one `ip route replace`: the switch of a key rotation), reads
  its peers with their last handshake and bytes received (`wg show NAME dump`), puts and
  removes peers (`wg set`), goes (`delete`). Every command runs in the caller's network
  namespace, or in `netns` (benchmarks).

Rules: commands are argv lists (no shell); a failing command raises `WireGuardError` with the
command's own message. May import trio, cryptography, the standard library, underlay.*.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from underlay.errors import UnderlayError
from underlay.netns_exec import ip_netns_exec
from underlay.wireguard_peers import TUNNEL_NETWORK, WireGuardPeer

USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
COMMAND_TIMEOUT = 10.0


class WireGuardError(UnderlayError):
    """A WireGuard command failed, or WireGuard is not available."""


@dataclass(frozen=True)
class WireGuardSupport:
    """`backend`: "kernel", "wireguard-go" or None (then `missing` names what to install)."""

    backend: str | None
    missing: str = ""


async def _run(argv: list[str], *, env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(COMMAND_TIMEOUT):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                        check=False, env=None if env is None
                                        else {**os.environ, **env})
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise WireGuardError(f"{' '.join(argv)}: {message or f'exit {result.returncode}'}")
    return result


async def probe_wireguard() -> WireGuardSupport:
    """Which WireGuard this host can run (see the module doc)."""
    if shutil.which("wg") is None:
        return WireGuardSupport(None, "wg (Debian package wireguard-tools)")
    probe = f"vxwgprobe{os.getpid() % 100000}"
    made = await _run(["ip", "link", "add", probe, "type", "wireguard"], check=False)
    if made.returncode == 0:
        await _run(["ip", "link", "del", probe], check=False)
        return WireGuardSupport("kernel")
    if shutil.which("wireguard-go") is not None:
        return WireGuardSupport("wireguard-go")
    return WireGuardSupport(None, "the wireguard kernel module, or wireguard-go (Debian "
                                  "package wireguard-go)")


def key_file(state_dir: Path, slot: int) -> Path:
    """Where the private key of interface slot `slot` lives."""
    return state_dir / ("wireguard.key" if slot == 0 else f"wireguard.{slot}.key")


def pending_key_file(state_dir: Path, slot: int) -> Path:
    """A rotation's new key for `slot`, until the switch makes it the current one."""
    return key_file(state_dir, slot).with_name(key_file(state_dir, slot).name + ".pending")


def load_private_key(path: Path) -> str:
    """The private key in `path` (base64), made there (mode 0600) when the file is absent."""
    if path.exists():
        return path.read_text().strip()
    return write_private_key(path)


def write_private_key(path: Path) -> str:
    """A new private key, written to `path` (mode 0600, atomically); returns it."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                                    NoEncryption())
    text = base64.b64encode(raw).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path.with_suffix(".tmp"), path)
    return text


def public_key_of(private_key: str) -> str:
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                            ).decode()


def interface_name(node: str, slot: int = 0) -> str:
    return "vxwg" + hashlib.sha256(node.encode()).hexdigest()[:8] + (str(slot) if slot else "")


@dataclass(frozen=True)
class PeerReading:
    """A peer as `wg show NAME dump` reports it."""

    peer: WireGuardPeer
    latest_handshake: int  # Unix time, 0: never
    received: int  # bytes


class WireGuardInterface:
    """The host's WireGuard interface and the commands on it."""

    def __init__(self, name: str, backend: str, private_key_path: Path, port: int,
                 tunnel: str, mtu: int, netns: str | None = None) -> None:
        self.netns = netns
        self.name = name
        self.backend = backend
        self.private_key_path = private_key_path
        self.port = port
        self.tunnel = tunnel
        self.mtu = mtu

    async def _run(self, argv: list[str], *, env: dict[str, str] | None = None,
                   check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return await _run(argv if self.netns is None else ip_netns_exec(self.netns, argv),
                          env=env, check=check)

    async def exists(self) -> bool:
        return (await self._run(["ip", "link", "show", self.name], check=False)).returncode == 0

    async def up(self, *, route: bool = True) -> bool:
        """Create the interface unless it is here (True: created), then key, port, address,
        MTU and up (each idempotent), and (`route`) the route to the tunnel network."""
        created = False
        if not await self.exists():
            if self.backend == "kernel":
                await self._run(["ip", "link", "add", self.name, "type", "wireguard"])
            else:
                await self._run(["wireguard-go", self.name], env=USERSPACE_ENV)
            created = True
        await self._run(["wg", "set", self.name, "listen-port", str(self.port), "private-key",
                    str(self.private_key_path)])
        await self._run(["ip", "address", "replace", f"{self.tunnel}/32", "dev", self.name])
        await self._run(["ip", "link", "set", self.name, "mtu", str(self.mtu), "up"])
        if route:
            await self.route()
        return created

    async def route(self) -> None:
        """Point the route to the tunnel network at this interface, our tunnel address as
        its source (atomic: one route replaced)."""
        await self._run(["ip", "route", "replace", str(TUNNEL_NETWORK), "dev", self.name,
                         "src", self.tunnel])

    async def delete(self) -> None:
        """Remove the interface (wireguard-go then ends); gone already counts as done."""
        if await self.exists():
            await self._run(["ip", "link", "del", self.name])

    async def readings(self) -> dict[str, PeerReading]:
        """The peers the interface holds, by public key (`wg show NAME dump`)."""
        out = (await self._run(["wg", "show", self.name, "dump"])).stdout.decode()
        readings: dict[str, PeerReading] = {}
        for line in out.splitlines()[1:]:  # the first line is the interface itself
            fields = line.split("\t")
            if len(fields) < 8:
                continue
            key, endpoint, allowed, handshake, received = fields[0], *fields[2:6]
            host, _, port = endpoint.rpartition(":")
            tunnel = allowed.split(",")[0].split("/")[0]
            if not port.isdigit() or allowed == "(none)":
                continue
            keepalive = int(fields[7]) if fields[7].isdigit() else 0
            readings[key] = PeerReading(
                WireGuardPeer(key, host.strip("[]"), int(port), tunnel, keepalive),
                int(handshake) if handshake.isdigit() else 0,
                int(received) if received.isdigit() else 0)
        return readings

    async def peers(self) -> dict[str, WireGuardPeer]:
        """The peers the interface holds, by public key."""
        return {key: reading.peer for key, reading in (await self.readings()).items()}

    async def put_peer(self, peer: WireGuardPeer) -> None:
        await self._run(["wg", "set", self.name, "peer", peer.public_key, "endpoint",
                         peer.endpoint, "allowed-ips", f"{peer.tunnel}/32",
                         "persistent-keepalive", str(peer.keepalive or "off")])

    async def remove_peer(self, public_key: str) -> None:
        await self._run(["wg", "set", self.name, "peer", public_key, "remove"])
