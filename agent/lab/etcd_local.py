"""A real, single-member etcd server on loopback, for the lab and the tests.

Owns one `/usr/bin/etcd` child process: its ports (given, or free ones picked by binding
port 0), its data directory and its log file. Rules:
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
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from agent.store.errors import EtcdStartError

ETCD_BINARY = "/usr/bin/etcd"
LOOPBACK = "127.0.0.1"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalEtcd:
    """One etcd member listening on 127.0.0.1:`client_port` (clients) and `peer_port` (raft).

    `heartbeat_ms` and `election_ms` are etcd's raft timings; the defaults here (50 ms, 500 ms)
    make a single-member server elect itself fast and let leases as short as 1 s expire on time.
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
    ) -> None:
        self.data_dir = Path(data_dir)
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
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) for the etcd3 client."""
        return (LOOPBACK, self.client_port)

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
            f"--initial-cluster={self.name}={self.peer_url}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--enable-v2=false",
        ]

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
        try:
            self.wait_healthy(timeout)
        except EtcdStartError:
            self.stop()
            raise

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
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0) as answer:
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
