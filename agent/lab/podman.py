"""Real rootful Podman on lab hosts: per-host configuration, storage, CNI dirs and image.

Owns: the files that make Debian's `podman` (4.3, CNI backend) usable inside one lab host
without touching the machine's own Podman: `containers.conf` (CNI backend, the host's own
`network_config_dir`, the lab's CNI bin dir with the `vxmesh` launcher first, cgroupfs, file
events, no default ulimits: the sandbox refuses to raise RLIMIT_NPROC), `--root`/`--runroot`
with the vfs driver, `tmp_dir`; the image `vxmesh/busybox:latest` imported from a root
filesystem made of `busybox-static`; the command line that runs podman in the host's network
namespace; removing every container at `lab down` (while the agent still answers DEL).

Layout under the host's directory: `podman/containers.conf`, `podman/root`, `podman/tmp`,
`cni/net.d` (what `vxmesh cni install` writes there); the run root is `/run/vxpodman-<host
namespace>` (podman refuses one longer than 50 characters). The lab's `cni-bin/` holds the
`vxmesh` launcher of this source tree.

May import: agent.cni.launcher, agent.errors, underlay.netns_exec, the standard library.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from agent.cni.launcher import install_launcher
from agent.errors import AgentError
from underlay.netns_exec import nsenter_net

IMAGE = "vxmesh/busybox:latest"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ip", "ping", "wget", "nc", "httpd", "sleep", "cat", "hostname", "nslookup",
           "ls", "echo", "ifconfig", "route", "true", "mkdir")
SYSTEM_PLUGIN_DIR = "/usr/lib/cni"
PODMAN_TIMEOUT = 120.0
RUNROOT_PARENT = Path("/run")


class PodmanError(AgentError):
    """Podman cannot be set up or did not do what was asked; the message says why."""


@dataclass(frozen=True)
class PodmanHost:
    """Where one lab host's Podman keeps everything, and how to run it there."""

    netns: str
    directory: Path
    plugin_dir: Path

    @property
    def conf(self) -> Path:
        return self.directory / "podman" / "containers.conf"

    @property
    def root(self) -> Path:
        return self.directory / "podman" / "root"

    @property
    def runroot(self) -> Path:
        return RUNROOT_PARENT / f"vxpodman-{self.netns}"

    @property
    def tmp(self) -> Path:
        return self.directory / "podman" / "tmp"

    @property
    def cni_conf_dir(self) -> Path:
        return self.directory / "cni" / "net.d"

    def argv(self, args: list[str]) -> list[str]:
        """`podman ARGS` as this host runs it: its network namespace only (the container
        namespaces podman mounts under /run/netns stay visible to the host's agent)."""
        return nsenter_net(self.netns, [
            "env", f"CONTAINERS_CONF={self.conf}", "podman", "--root", str(self.root),
            "--runroot", str(self.runroot), "--storage-driver", "vfs", *args])

    def run(self, args: list[str], *, timeout: float = PODMAN_TIMEOUT,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        answer = subprocess.run(self.argv(args), input=stdin.decode() if stdin else None,
                                capture_output=True, text=True, timeout=timeout, check=False)
        return answer

    def containers_conf(self) -> str:
        def toml_list(items: list[str]) -> str:
            return "[" + ", ".join(f'"{item}"' for item in items) + "]"

        return (
            "# Written by `vxmesh lab up --podman` for this lab host only.\n"
            "[containers]\n"
            "default_ulimits = []\n"
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = {toml_list([str(self.plugin_dir), SYSTEM_PLUGIN_DIR])}\n"
            f'network_config_dir = "{self.cni_conf_dir}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            # crun refuses this machine's hybrid cgroup layout; runc runs.
            'runtime = "runc"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.directory / "podman" / "events.log"}"\n'
            f'tmp_dir = "{self.tmp}"\n')


def busybox_rootfs(target: Path) -> Path:
    """A tar of a root filesystem with busybox-static and its applets, written to `target`."""
    if not BUSYBOX.exists():
        raise PodmanError(f"{BUSYBOX} is missing: install busybox-static (deploy/setup.sh does)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("bin", "etc", "tmp", "var", "var/www"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    target.write_bytes(buffer.getvalue())
    return target


def install_plugin_dir(lab_directory: Path) -> Path:
    """The lab's CNI bin dir with this tree's `vxmesh` launcher (found before /usr/lib/cni)."""
    directory = lab_directory / "cni-bin"
    install_launcher(directory)
    return directory


def provision(host: PodmanHost, rootfs: Path) -> None:
    """Make `podman` usable on the host: its files, and the image imported once."""
    if shutil.which("podman") is None:
        raise PodmanError("podman is not installed (deploy/setup.sh installs podman, "
                          "containernetworking-plugins and busybox-static)")
    for directory in (host.root, host.runroot, host.tmp, host.cni_conf_dir):
        directory.mkdir(parents=True, exist_ok=True)
    host.conf.write_text(host.containers_conf())
    if host.run(["image", "exists", IMAGE]).returncode == 0:
        return
    answer = host.run(["import", str(rootfs), IMAGE])
    if answer.returncode != 0:
        raise PodmanError(f"podman import on {host.netns} failed: {answer.stderr.strip()}")


def remove_containers(host: PodmanHost) -> None:
    """Stop and remove every container of the host (CNI DEL runs for each while the agent is
    still up); then podman's own mounts under its run root are gone too."""
    if not host.conf.exists():
        return
    host.run(["rm", "--all", "--force", "--time", "0"])
    host.run(["system", "prune", "--force"], timeout=60)
    unmount_below(host.runroot)
    shutil.rmtree(host.runroot, ignore_errors=True)


def unmount_below(directory: Path) -> None:
    """Unmount whatever is still mounted under `directory` (a crash can leave podman's shm
    mounts), deepest first, so the directory can be removed."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(directory).rstrip("/") + "/"
    points = sorted({line.split()[1] for line in mounts
                     if len(line.split()) > 1 and line.split()[1].startswith(prefix)},
                    key=len, reverse=True)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=10, check=False)
