"""One real dockerd per lab host, inside that host's network namespace, with the agent as its
network and IPAM plugin.

Owns: starting dockerd (`nsenter --net` into the host's namespace and `--mount` into a mount
namespace of its own, kept by a holder process (`sleep infinity`, made with `unshare --mount`)
so that it outlives a dockerd restart: there the daemon's `/run/docker/plugins` is the host
directory's `plugins/`, where that host's agent serves `vxmesh.sock`, and the containers' netns
mounts stay for a live-restored daemon to find; vfs storage; its own data root, exec root,
pidfile and socket `<host dir>/docker/docker.sock`; `--live-restore`), waiting until it
answers, importing the image `vxmesh/busybox:latest` from a root filesystem holding Debian's
busybox-static (no registry is reachable; agent.lab.podman makes it), and stopping it
(containers removed first, then SIGTERM by pid).

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

    @property
    def holder_pidfile(self) -> Path:
        return self.directory / "mounts.pid"

    def holder_command(self) -> list[str]:
        """A process that keeps the daemon's mount namespace: `/run/docker/plugins` bound to
        `plugins/`, and the containers' netns mounts dockerd makes under its exec root, which
        must outlive a dockerd restart (live-restore)."""
        script = (f"mkdir -p /run/docker/plugins && mount --bind {self.plugins} "
                  "/run/docker/plugins && exec sleep infinity")
        return nsenter_net(self.netns, ["unshare", "--mount", "--propagation", "private", "sh",
                                        "-c", script])

    def holder_pid(self) -> int | None:
        try:
            pid = int(self.holder_pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            same_netns = os.stat(f"/proc/{pid}/ns/net").st_ino == \
                os.stat(f"/run/netns/{self.netns}").st_ino
        except (OSError, ValueError):
            return None
        return pid if cmdline == b"sleep\0infinity\0" and same_netns else None

    def command(self, holder: int) -> list[str]:
        return nsenter_net(self.netns, [
            "nsenter", f"--mount=/proc/{holder}/ns/mnt", "--", "dockerd",
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile), "-H", self.host, "--storage-driver=vfs",
            "--live-restore", "--log-level=warn"])

    def _holder(self) -> int:
        """The mount namespace holder's pid, started if it is not running."""
        pid = self.holder_pid()
        if pid is not None:
            return pid
        holder = subprocess.Popen(self.holder_command(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, cwd="/")
        self.holder_pidfile.write_text(f"{holder.pid}\n")
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # until the bind mount is in place
            if holder.poll() is not None:
                raise DockerLabError(f"mount namespace for dockerd in {self.netns} exited "
                                     f"({holder.returncode})")
            if self.holder_pid() is not None:
                return holder.pid
            time.sleep(0.02)
        raise DockerLabError(f"mount namespace for dockerd in {self.netns} not ready in 10 s")

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
        holder = self._holder()
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(self.command(holder), stdin=subprocess.DEVNULL, stdout=log,
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
        """Remove every container, SIGTERM the daemon by pid (SIGKILL after a while), then end
        the mount namespace's holder."""
        pid = self.pid()
        if pid is None:
            self._stop_holder()
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
        self._stop_holder()

    def _stop_holder(self) -> None:
        holder = self.holder_pid()
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signal.SIGKILL)

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
