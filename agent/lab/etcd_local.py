"""Real etcd servers for the lab and the tests: one member on loopback, or a cluster of them.

Owns one `/usr/bin/etcd` child process per member: its ports (given, or free ones picked by
binding port 0), its data directory and its log file; with `MemberTls`, its server certificate
(client and peer traffic over TLS, client certificates required, an optional revocation list).
`LocalCluster` runs N members on loopback (`cluster=` lists every member's peer URL). Rules:
- `start()` blocks until `/health` answers `{"health": "true"}` or the deadline passes (then
  the process is stopped and `EtcdStartError` carries the tail of its log).
- `stop()` sends SIGTERM to the pid we started, waits, then SIGKILL; `kill()` is SIGKILL at once
  (a crash, for tests). Nothing else is ever signalled.
- A stopped server restarts on the same data directory and the same ports (`start()` again):
  its keys, revisions and leases survive, as they would on a real host.
The calls block (subprocess, HTTP health probe); from trio, wrap them in
`trio.to_thread.run_sync`. Imports: stdlib and agent.store.errors only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from agent.lab.certs import CertFiles, LabCA
from agent.store.errors import EtcdStartError

ETCD_BINARY = "/usr/bin/etcd"
LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class MemberTls:
    """A member's TLS: its certificate (server and peer), the CA clients and peers must be
    signed by, a certificate clients' health probes present, and an optional CRL."""

    ca: Path
    member: CertFiles
    probe: CertFiles
    crl: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.probe.cert), str(self.probe.key))
        return context


class LocalEtcd:
    """One etcd member listening on `address`:`client_port` (clients) and `peer_port` (raft).

    `heartbeat_ms` and `election_ms` are etcd's raft timings; the defaults here (50 ms, 500 ms)
    make a single-member server elect itself fast and let leases as short as 1 s expire on time.
    `cluster` (name -> peer URL of every member, this one included) makes it one of several.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "vxmesh-etcd",
        binary: str = ETCD_BINARY,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        log_path: Path | None = None,
        address: str = LOOPBACK,
        tls: MemberTls | None = None,
        cluster: dict[str, str] | None = None,
        auth_token_ttl: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.address = address
        self.tls = tls
        self.cluster = cluster
        self.auth_token_ttl = auth_token_ttl
        self._ports_are_ours = client_port is None and peer_port is None
        self.client_port = client_port if client_port is not None else free_loopback_port()
        self.peer_port = peer_port if peer_port is not None else free_loopback_port()
        self._started_once = False
        self.name = name
        self.binary = binary
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.log_path = log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.address}:{self.peer_port}"

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) for the etcd client."""
        return (self.address, self.client_port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The etcd command line (flags only; no environment is needed)."""
        return [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            "--initial-cluster=" + ",".join(f"{n}={url}" for n, url in self.members().items()),
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--enable-v2=false",
            *self._tls_flags(),
            *(["--auth-token=simple", f"--auth-token-ttl={self.auth_token_ttl}"]
              if self.auth_token_ttl else []),
        ]

    def members(self) -> dict[str, str]:
        """Name -> peer URL of every member of this member's cluster."""
        return self.cluster or {self.name: self.peer_url}

    def _tls_flags(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        flags = [
            f"--cert-file={tls.member.cert}", f"--key-file={tls.member.key}",
            f"--trusted-ca-file={tls.ca}", "--client-cert-auth",
            f"--peer-cert-file={tls.member.cert}", f"--peer-key-file={tls.member.key}",
            f"--peer-trusted-ca-file={tls.ca}", "--peer-client-cert-auth",
        ]
        if tls.crl is not None:
            flags.append(f"--client-crl-file={tls.crl}")
        return flags

    def start(self, timeout: float = 15.0) -> None:
        """Start (or restart) the server and block until it is healthy.

        On the very first start with ports we picked, a port taken in the meantime by another
        process is retried once on fresh ports; afterwards the ports never change.
        """
        if self.is_running():
            return
        try:
            self._start_once(timeout)
        except EtcdStartError:
            if self._started_once or not self._ports_are_ours:
                raise
            if "address already in use" not in self.log_tail():
                raise
            self.client_port = free_loopback_port()
            self.peer_port = free_loopback_port()
            self._start_once(timeout)
        self._started_once = True

    def _start_once(self, timeout: float) -> None:
        self.launch()
        try:
            self.wait_healthy(timeout)
        except EtcdStartError:
            self.stop()
            raise

    def launch(self) -> None:
        """Start the process without waiting (members of a new cluster wait for each other)."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float) -> None:
        """Poll `/health` until it reports healthy; raise `EtcdStartError` at the deadline."""
        deadline = time.monotonic() + timeout
        pause = 0.02
        last = "no answer yet"
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise EtcdStartError(
                    f"etcd exited (status {code}) before it was healthy; log tail:\n"
                    + self.log_tail()
                )
            status = self.health()
            if status is True:
                return
            last = str(status)
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"etcd on {self.client_url} not healthy after {timeout:.1f}s ({last});"
                    " log tail:\n" + self.log_tail()
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def health(self) -> bool | str:
        """True when etcd says it is healthy, else a short reason."""
        context = self.tls.client_context() if self.tls else None
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=1.0, context=context
            ) as answer:
                body = json.loads(answer.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if isinstance(body, dict) and body.get("health") == "true":
            return True
        return f"health answer {body!r}"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process we started, wait up to `timeout`, then SIGKILL it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL the process at once, as a crash would (the data directory stays)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._process = None

    def restart(self, timeout: float = 15.0) -> None:
        """Stop, then start again on the same ports and data directory."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalEtcd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalCluster:
    """`size` etcd members on loopback (free ports), optionally all over mutual TLS.

    With `tls`, `directory/pki` holds a fresh lab CA, each member's certificate (its address
    as an IP SAN) and a client certificate `client` for the tests and agents; every name in
    `revoked_clients` gets a client certificate too, listed in the members' CRL.
    Raft timings default to etcd's own (100 ms heartbeat, 1 s election timeout).
    """

    def __init__(self, directory: Path, size: int = 3, *, tls: bool = False,
                 heartbeat_ms: int = 100, election_ms: int = 1000,
                 revoked_clients: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        self.election_ms = election_ms
        self.ca: LabCA | None = LabCA(self.directory / "pki") if tls else None
        self.client_cert: CertFiles | None = None
        self.revoked: dict[str, CertFiles] = {}
        probe: CertFiles | None = None
        crl: Path | None = None
        if self.ca is not None:
            self.client_cert = self.ca.issue("client", client=True)
            probe = self.ca.issue("probe", client=True)
            self.revoked = {n: self.ca.issue(n, client=True) for n in revoked_clients}
            if self.revoked:
                crl = self.ca.revocation_list([c.cert for c in self.revoked.values()])
        names = [f"m{i}" for i in range(1, size + 1)]
        peer_ports = {name: free_loopback_port() for name in names}
        scheme = "https" if tls else "http"
        cluster = {name: f"{scheme}://{LOOPBACK}:{port}" for name, port in peer_ports.items()}
        self.members: list[LocalEtcd] = []
        for name in names:
            member_tls = None
            if self.ca is not None and probe is not None:
                member_cert = self.ca.issue(name, addresses=[LOOPBACK], server=True, client=True)
                member_tls = MemberTls(self.ca.cert_path, member_cert, probe, crl)
            self.members.append(LocalEtcd(
                self.directory / name, client_port=free_loopback_port(),
                peer_port=peer_ports[name], name=name, heartbeat_ms=heartbeat_ms,
                election_ms=election_ms, tls=member_tls, cluster=cluster))

    @property
    def urls(self) -> list[str]:
        return [member.client_url for member in self.members]

    def start(self, timeout: float = 30.0) -> None:
        for member in self.members:
            member.launch()
        deadline = time.monotonic() + timeout
        try:
            for member in self.members:
                member.wait_healthy(max(1.0, deadline - time.monotonic()))
        except EtcdStartError:
            self.stop()
            raise

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def member(self, name: str) -> LocalEtcd:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
