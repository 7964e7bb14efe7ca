"""One real dockerd per lab host, inside that host's network namespace, with the agent as its
network and IPAM plugin.

Owns: starting dockerd (`nsenter --net` into the host's namespace, then `unshare --mount` so
that the daemon's `/run/docker/plugins` is the host directory's `plugins/`, where that host's
agent serves `vxmesh.sock`; vfs storage; its own data root, exec root, pidfile and socket
`<host dir>/docker/docker.sock`; `--live-restore`), waiting until it answers, importing the
image `vxmesh/busybox:latest` from a root filesystem holding Debian's busybox-static (no
registry is reachable; agent.lab.podman makes it), and stopping it (containers removed
first, then SIGTERM by pid).

Rules:
- `ip netns exec` is not used for dockerd: it remounts /sys and dockerd then fails with
  "Devices cgroup isn't mounted".
- The machine's own `/run/docker/plugins` and `/var/run/docker.sock` are never touched.

May import: agent.docker.engine, agent.errors, agent.lab.podman (the image and its root
filesystem), underlay.netns_exec, the standard library.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent.docker.engine import EngineClient, EngineError
from agent.errors import AgentError
from agent.lab.podman import IMAGE
from underlay.netns_exec import nsenter_net

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class DockerLabError(AgentError):
    """dockerd of a lab host could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class LabDocker:
    """Where one lab host's dockerd lives (all under `<host dir>/docker`)."""

    netns: str
    directory: Path

    @property
    def socket(self) -> Path:
        return self.directory / "docker.sock"

    @property
    def host(self) -> str:
        """The DOCKER_HOST value of this daemon."""
        return f"unix://{self.socket}"

    @property
    def plugins(self) -> Path:
        """Bind-mounted on the daemon's `/run/docker/plugins`."""
        return self.directory / "plugins"

    @property
    def plugin_socket(self) -> Path:
        return self.plugins / "vxmesh.sock"

    @property
    def pidfile(self) -> Path:
        return self.directory / "dockerd.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "dockerd.log"

    @property
    def data_root(self) -> Path:
        return self.directory / "data"

    @property
    def exec_root(self) -> Path:
        return self.directory / "exec"

    def engine(self, timeout: float = 30.0) -> EngineClient:
        return EngineClient(str(self.socket), timeout)

    def command(self) -> list[str]:
        script = (
            f"mkdir -p /run/docker/plugins && mount --bind {self.plugins} /run/docker/plugins"
            f" && exec dockerd --data-root {self.data_root} --exec-root {self.exec_root}"
            f" --pidfile {self.pidfile} -H {self.host} --storage-driver=vfs --live-restore"
            " --log-level=warn")
        return nsenter_net(self.netns, ["unshare", "--mount", "--propagation", "private", "sh",
                                        "-c", script])

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _runs_dockerd(pid, self.host) else None

    def start(self) -> subprocess.Popen[bytes]:
        """Start the daemon (returns at once; `wait_ready` waits for it)."""
        if shutil.which("dockerd") is None:
            raise DockerLabError("dockerd is not installed (`apt-get install docker.io`, or "
                                 "`bash deploy/setup.sh`)")
        self.plugins.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd="/")

    def wait_ready(self, process: subprocess.Popen[bytes] | None = None,
                   timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        engine = self.engine(timeout=2)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise DockerLabError(f"dockerd in {self.netns} exited ({process.returncode}); "
                                     f"log tail:\n{self.log_tail()}")
            if self.socket.exists() and engine.ping():
                return
            time.sleep(0.1)
        raise DockerLabError(f"dockerd in {self.netns} did not answer within {timeout:.0f} s; "
                             f"log tail:\n{self.log_tail()}")

    def import_image(self, rootfs: Path) -> None:
        """`docker import` the busybox-static root filesystem tar `rootfs` as IMAGE (once)."""
        engine = self.engine()
        with contextlib.suppress(EngineError):
            engine.request("GET", f"/images/{IMAGE}/json")
            return
        proc = subprocess.run(["docker", "-H", self.host, "import", str(rootfs), IMAGE],
                              capture_output=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise DockerLabError(f"docker import in {self.netns}: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")

    def stop(self) -> None:
        """Remove every container, then SIGTERM the daemon by pid (SIGKILL after a while)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(EngineError):
            engine = self.engine(timeout=20)
            for container in engine.containers():
                with contextlib.suppress(EngineError):
                    engine.request("DELETE", f"/containers/{container['Id']}",
                                   query={"force": "1"})
        signal_pid(pid, self.host, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and _runs_dockerd(pid, self.host):
            time.sleep(0.05)
        if _runs_dockerd(pid, self.host):
            signal_pid(pid, self.host, signal.SIGKILL)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _runs_dockerd(pid: int, host: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "dockerd" in cmdline and host in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def signal_pid(pid: int, host: str, sig: int) -> None:
    """Signal dockerd `pid` if it still is the daemon of `host` (never a recycled pid)."""
    if _runs_dockerd(pid, host):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
