"""The host's WireGuard interface: which implementation is here, the key pair, the commands.

Owns:
- `probe_wireguard()`: the kernel module when `ip link add ... type wireguard` works (the
  probe device is deleted at once), else Debian's `wireguard-go` (userspace, run with
  `WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1`), else none; `wg` (wireguard-tools) is
  needed by both. `WireGuardSupport.missing` names what to install.
- `load_private_key(path)`: the host's private key, made on first use (mode 0600); X25519
  through `cryptography`, base64 as `wg genkey` writes it. `public_key_of(private)`.
- `interface_name(node)`: `vxwg` + 8 hex digits of the node name's hash: unique on the
  machine, since wireguard-go's control sockets in /var/run/wireguard are shared by every
  network namespace.
- `WireGuardInterface`: brings the interface up (adopting one left by a previous run, so a
  restart drops no packet), reads its peers (`wg show NAME dump`), puts and removes peers
  (`wg set`). Every command runs in the caller's network namespace, or in `netns` (benchmarks).

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


def load_private_key(path: Path) -> str:
    """The private key in `path` (base64), made there (mode 0600) when the file is absent."""
    if path.exists():
        return path.read_text().strip()
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


def interface_name(node: str) -> str:
    return "vxwg" + hashlib.sha256(node.encode()).hexdigest()[:8]


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

    async def up(self) -> bool:
        """Create the interface unless it is here (True: created), then key, port, address,
        MTU and up (each idempotent)."""
        created = False
        if not await self.exists():
            if self.backend == "kernel":
                await self._run(["ip", "link", "add", self.name, "type", "wireguard"])
            else:
                await self._run(["wireguard-go", self.name], env=USERSPACE_ENV)
            created = True
        await self._run(["wg", "set", self.name, "listen-port", str(self.port), "private-key",
                    str(self.private_key_path)])
        await self._run(["ip", "address", "replace",
                    f"{self.tunnel}/{TUNNEL_NETWORK.prefixlen}", "dev", self.name])
        await self._run(["ip", "link", "set", self.name, "mtu", str(self.mtu), "up"])
        return created

    async def peers(self) -> dict[str, WireGuardPeer]:
        """The peers the interface holds, by public key (`wg show NAME dump`)."""
        out = (await self._run(["wg", "show", self.name, "dump"])).stdout.decode()
        peers: dict[str, WireGuardPeer] = {}
        for line in out.splitlines()[1:]:  # the first line is the interface itself
            fields = line.split("\t")
            if len(fields) < 4:
                continue
            key, endpoint, allowed = fields[0], fields[2], fields[3]
            host, _, port = endpoint.rpartition(":")
            tunnel = allowed.split(",")[0].split("/")[0]
            if not port.isdigit() or allowed == "(none)":
                continue
            peers[key] = WireGuardPeer(key, host.strip("[]"), int(port), tunnel)
        return peers

    async def put_peer(self, peer: WireGuardPeer) -> None:
        await self._run(["wg", "set", self.name, "peer", peer.public_key, "endpoint",
                         peer.endpoint, "allowed-ips", f"{peer.tunnel}/32"])

    async def remove_peer(self, public_key: str) -> None:
        await self._run(["wg", "set", self.name, "peer", public_key, "remove"])
