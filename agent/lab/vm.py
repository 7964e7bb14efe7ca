"""Debian VMs under qemu for the VM tier: real systemd, a full kernel, the agent as its unit.

Owns: building (and caching) the machine image with `deploy/vagrant/build-box.sh`, choosing
the accelerator (KVM only when a probe boots a kernel with it, TCG otherwise), `VmLab` (one
network namespace made for the run holding a bridge and one tap per VM, a qcow2 overlay per VM
on the cached image, qemu started inside that namespace, ssh and file copies over the bridge),
the wheelhouse of this tree, and provisioning a VM with `deploy/vagrant/provision.sh` exactly
as Vagrant would (etcd on the etcd node, the agent as the systemd unit everywhere).

Rules: nothing is added to the machine's own interfaces and no VM has a route out: the VMs'
only network is the bridge inside the run's namespace (no user-mode networking). qemu
processes are stopped by their own pid; `VmLab.close()` kills what it started and deletes the
namespace and the overlays even when the caller failed. Every command has a timeout.

May import: the standard library, agent.errors, agent.lab.namespaces, underlay.netns_exec.
"""

from __future__ import annotations

import base64
import io
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError
from agent.lab.namespaces import run
from underlay.netns_exec import ip_netns_exec

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "vagrant" / "build-box.sh"
PROVISION_SCRIPT = REPO / "deploy" / "vagrant" / "provision.sh"
DEFAULT_CACHE = Path(os.environ.get("VXMESH_VM_CACHE", "/var/cache/vxmesh-vm"))
INSECURE_KEY_GLOB = "vagrant-*/keys/vagrant"
GEMS = Path("/usr/share/rubygems-integration/all/gems")
LAB_SUBNET = "192.168.56"
BRIDGE_ADDRESS = f"{LAB_SUBNET}.1"
REMOTE_SOURCE = "/opt/vxmesh/src"
REMOTE_WHEELS = "/opt/vxmesh/wheels"
# The unit's TimeoutStartSec under TCG: the agent's first start byte-compiles its modules under
# emulation (more than the unit's 90 s on a busy machine); KVM keeps the unit's own.
TCG_START_TIMEOUT = "600s"


class VmError(AgentError):
    """A VM could not be built, booted, reached or provisioned (the message says which)."""


@dataclass(frozen=True)
class VmImage:
    root: Path
    kernel: Path
    initrd: Path
    build_seconds: float
    box: Path | None


@dataclass(frozen=True)
class VmSpec:
    name: str
    address: str
    memory_mb: int = 768


@dataclass
class _Vm:
    spec: VmSpec
    tap: str
    overlay: Path
    console: Path
    process: subprocess.Popen[bytes] | None = None
    booted_s: float | None = None


def build_image(cache: Path = DEFAULT_CACHE, *, box: bool = False,
                timeout: float = 1800) -> VmImage:
    """The cached image (built by build-box.sh when the cache has none for this script)."""
    argv = [str(BUILD_SCRIPT), "--cache", str(cache)] + (["--box"] if box else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise VmError(f"build-box.sh failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return VmImage(root=Path(fields["image"]), kernel=Path(fields["kernel"]),
                   initrd=Path(fields["initrd"]),
                   build_seconds=float(fields["build_seconds"]),
                   box=Path(fields["box"]) if "box" in fields else None)


def insecure_key() -> Path:
    """Vagrant's published insecure private key, from the installed vagrant package."""
    found = sorted(GEMS.glob(INSECURE_KEY_GLOB))
    if not found:
        raise VmError(f"Vagrant's insecure key not found under {GEMS} (install vagrant)")
    return found[-1]


def _kernel_args(spec: VmSpec | None) -> str:
    args = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1"
    if spec is not None:
        args += (f" systemd.hostname={spec.name}"
                 f" ip={spec.address}::{BRIDGE_ADDRESS}:255.255.255.0:{spec.name}:eth0:off")
    return args


def _qemu_argv(image: VmImage, accel: str, disk: Path, console: Path, memory_mb: int,
               kernel_args: str, network: Sequence[str]) -> list[str]:
    return ["qemu-system-x86_64", "-accel", accel, "-smp", "1", "-m", str(memory_mb),
            "-no-reboot", "-nodefaults", "-display", "none", "-monitor", "none",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", kernel_args,
            "-drive", f"file={disk},format=qcow2,if=virtio", "-serial", f"file:{console}",
            *network]


def _overlay(image: VmImage, path: Path) -> None:
    path.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.root), "-F", "raw",
         str(path)])


def kvm_boots(image: VmImage, directory: Path, *, timeout: float = 25.0) -> bool:
    """True when a KVM guest reaches the kernel's init within `timeout` (nested KVM here has
    been seen to hang in the firmware, before the kernel prints anything)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    disk, console = directory / "kvm-probe.qcow2", directory / "kvm-probe.log"
    _overlay(image, disk)
    console.write_bytes(b"")
    argv = _qemu_argv(image, "kvm", disk, console, 256, _kernel_args(None), ["-nic", "none"])
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as probe:
        deadline = time.monotonic() + timeout
        booted = False
        while time.monotonic() < deadline and probe.poll() is None:
            if b"Run /init" in console.read_bytes() or b"systemd[1]" in console.read_bytes():
                booted = True
                break
            time.sleep(0.5)
        probe.kill()
        probe.wait(timeout=30)
    disk.unlink(missing_ok=True)
    return booted


def choose_accel(image: VmImage, directory: Path, cache: Path = DEFAULT_CACHE) -> str:
    """VXMESH_VM_ACCEL (kvm or tcg) if set, else the probe's answer, cached per host kernel."""
    wanted = os.environ.get("VXMESH_VM_ACCEL", "auto")
    if wanted in ("kvm", "tcg"):
        return wanted
    if wanted != "auto":
        raise VmError(f"VXMESH_VM_ACCEL: {wanted!r} is not one of auto, kvm, tcg")
    remembered = cache / f"accel-{platform.release()}"
    if remembered.exists():
        return remembered.read_text().strip()
    accel = "kvm" if kvm_boots(image, directory) else "tcg"
    remembered.write_text(accel + "\n")
    return accel


def wheelhouse(directory: Path, cache: Path = DEFAULT_CACHE, *, timeout: float = 900) -> Path:
    """A directory with this tree's wheel and its dependencies' (cached), for an offline pip."""
    deps = cache / "wheels"
    if not (deps / ".complete").exists():
        deps.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(deps),
                        str(REPO)], check=True, capture_output=True, timeout=timeout)
        (deps / ".complete").write_text("")
    out = directory / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
                    str(out), str(REPO)], check=True, capture_output=True, timeout=timeout)
    for wheel in deps.glob("*.whl"):
        if not wheel.name.startswith("vxmesh-"):
            (out / wheel.name).write_bytes(wheel.read_bytes())
    return out


@dataclass
class VmLab:
    """VMs on one bridge inside the network namespace `<prefix><pid>`."""

    directory: Path
    prefix: str
    image: VmImage
    specs: Sequence[VmSpec]
    accel: str = "tcg"
    netns: str = field(init=False)
    _vms: dict[str, _Vm] = field(init=False, default_factory=dict)
    _key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.netns = f"{self.prefix}{os.getpid()}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = self.directory / "insecure_key"

    def __enter__(self) -> VmLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Namespace, bridge, taps, overlays; every VM's qemu started (not yet booted)."""
        self._key.write_bytes(insecure_key().read_bytes())
        self._key.chmod(0o600)
        run(["ip", "netns", "add", self.netns])
        run(["ip", "link", "set", "lo", "up"], netns=self.netns)
        run(["ip", "link", "add", "br0", "type", "bridge"], netns=self.netns)
        run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", "br0"], netns=self.netns)
        run(["ip", "link", "set", "br0", "up"], netns=self.netns)
        for index, spec in enumerate(self.specs):
            tap = f"tap{index}"
            run(["ip", "tuntap", "add", tap, "mode", "tap"], netns=self.netns)
            run(["ip", "link", "set", tap, "master", "br0", "up"], netns=self.netns)
            vm = _Vm(spec, tap, self.directory / f"{spec.name}.qcow2",
                     self.directory / f"{spec.name}.console.log")
            _overlay(self.image, vm.overlay)
            self._vms[spec.name] = vm
            self._launch(vm, index)

    def _launch(self, vm: _Vm, index: int) -> None:
        vm.console.write_bytes(b"")
        mac = f"52:54:00:22:00:{index + 1:02x}"
        network = ["-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
                   "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        argv = _qemu_argv(self.image, self.accel, vm.overlay, vm.console, vm.spec.memory_mb,
                          _kernel_args(vm.spec), network)
        log = (self.directory / f"{vm.spec.name}.qemu.log").open("ab")
        vm.process = subprocess.Popen(ip_netns_exec(self.netns, argv),
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()

    def boot(self, name: str) -> None:
        """Start a stopped VM again (its overlay, so its disk, is kept)."""
        vm = self._vms[name]
        if vm.process is not None and vm.process.poll() is None:
            return
        self._launch(vm, list(self._vms).index(name))

    def names(self) -> list[str]:
        return list(self._vms)

    def address(self, name: str) -> str:
        return self._vms[name].spec.address

    def ssh_argv(self, name: str, command: str) -> list[str]:
        return ip_netns_exec(self.netns, [
            "ssh", "-i", str(self._key), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=6", f"vagrant@{self.address(name)}", command])

    def ssh(self, name: str, command: str, *, timeout: float = 180, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the VM as the vagrant user (`sudo` for root)."""
        done = subprocess.run(self.ssh_argv(name, command), input=stdin, capture_output=True,
                              timeout=timeout)
        result = subprocess.CompletedProcess(done.args, done.returncode,
                                             done.stdout.decode(errors="replace"),
                                             done.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise VmError(f"{name}: {command!r} exited {result.returncode}: "
                          f"{(result.stderr or result.stdout).strip()[-1500:]}")
        return result

    def wait_ssh(self, name: str, *, timeout: float = 600) -> float:
        """Seconds until the VM answers over ssh (VmError with the console's tail if never)."""
        vm = self._vms[name]
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if vm.process is not None and vm.process.poll() is not None:
                raise VmError(f"{name}: qemu exited {vm.process.returncode}: "
                              f"{self.console_tail(name)}")
            probe = subprocess.run(self.ssh_argv(name, "true"), capture_output=True,
                                   timeout=60)
            if probe.returncode == 0:
                vm.booted_s = time.monotonic() - started
                return vm.booted_s
            time.sleep(2)
        raise VmError(f"{name}: no ssh after {timeout:.0f} s: {self.console_tail(name)}")

    def console_tail(self, name: str, size: int = 1500) -> str:
        return self._vms[name].console.read_bytes()[-size:].decode(errors="replace")

    def put(self, name: str, files: Mapping[str, Path]) -> None:
        """Copy local files or directories to absolute paths on the VM (as root)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for remote, local in files.items():
                tar.add(str(local), arcname=remote.lstrip("/"))
        self.ssh(name, "sudo tar -x -f - -C / --no-same-owner", stdin=buffer.getvalue())

    def power_off(self, name: str, *, timeout: float = 180) -> None:
        """A clean shutdown, as `vagrant halt`: systemd stops every unit, then qemu exits."""
        vm = self._vms[name]
        self.ssh(name, "sudo systemctl poweroff", check=False, timeout=60)
        if vm.process is not None:
            try:
                vm.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                vm.process.kill()
                vm.process.wait(timeout=30)

    def close(self) -> None:
        """Kill every qemu this lab started (by pid), delete the namespace and the overlays."""
        for vm in self._vms.values():
            if vm.process is not None and vm.process.poll() is None:
                vm.process.send_signal(signal.SIGKILL)
                vm.process.wait(timeout=30)
            vm.overlay.unlink(missing_ok=True)
        run(["ip", "netns", "del", self.netns], check=False)


@dataclass(frozen=True)
class Cluster:
    """What provision.sh is given on every node (as the Vagrantfile's environment)."""

    etcd_node: str
    etcd_url: str
    seeds: str
    gossip_key: str


def cluster_for(lab: VmLab) -> Cluster:
    etcd_node = lab.names()[0]
    return Cluster(etcd_node=etcd_node, etcd_url=f"http://{lab.address(etcd_node)}:2379",
                   seeds=",".join(f"{lab.address(n)}:7946" for n in lab.names()),
                   gossip_key=base64.b64encode(secrets.token_bytes(32)).decode())


def provision(lab: VmLab, name: str, cluster: Cluster, wheels: Path, *,
              timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """Copy deploy/ and the wheelhouse to the VM and run provision.sh there, as root."""
    lab.put(name, {f"{REMOTE_SOURCE}/deploy": REPO / "deploy", REMOTE_WHEELS: wheels})
    env = {"VXMESH_NODE": name, "VXMESH_ADDRESS": lab.address(name),
           "VXMESH_ETCD_URL": cluster.etcd_url, "VXMESH_SEEDS": cluster.seeds,
           "VXMESH_GOSSIP_KEY": cluster.gossip_key,
           "VXMESH_RUN_ETCD": "1" if name == cluster.etcd_node else "0",
           "VXMESH_WHEELHOUSE": REMOTE_WHEELS,
           "VXMESH_START_TIMEOUT": TCG_START_TIMEOUT if lab.accel == "tcg" else ""}
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    try:
        return lab.ssh(name, f"sudo env {assignments} bash {REMOTE_SOURCE}/deploy/vagrant/"
                             f"{PROVISION_SCRIPT.name}", timeout=timeout)
    except VmError as exc:
        journal = lab.ssh(name, "sudo journalctl -u vxmesh-agent -u etcd -n 25 --no-pager -o "
                                "short-monotonic", check=False, timeout=120)
        raise VmError(f"{exc}\n-- the journal of vxmesh-agent and etcd on {name}:\n"
                      f"{journal.stdout.strip()}") from exc
