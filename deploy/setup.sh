#!/usr/bin/env bash
# Installs what vxmesh needs on a fresh Debian machine, as root, and builds the venv in .venv.
#   deploy/setup.sh          runtime: iproute2, nftables, etcd, iperf3, ethtool, podman with the reference
#                            CNI plugins, Docker (docker.io; its system service is left as
#                            Debian starts it), busybox-static (the lab's image), gcc (the CNI
#                            plugin's front), the Python package, and the `vxmesh` CNI plugin in
#                            /usr/lib/cni and /opt/cni/bin
#   deploy/setup.sh --test   also the test and CI tools (promtool, shellcheck, vagrant, serf)
#   deploy/setup.sh --vm     also the VM tier's tools (qemu-system-x86, qemu-utils, mmdebstrap,
#                            vagrant for its insecure key, vagrant-libvirt and libvirtd, whose
#                            system service is not started): `pytest -m vm`, bench/vagrant.py
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_vm=0
for arg in "$@"; do
    case "$arg" in
        --test) want_test=1 ;;
        --vm) want_vm=1 ;;
        *) echo "setup.sh: unknown option '$arg' (known: --test, --vm)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and creates network namespaces)" >&2
    exit 1
fi

packages=(iproute2 nftables etcd-server etcd-client iperf3 procps psmisc curl iputils-ping python3-venv
          podman containernetworking-plugins busybox-static docker.io wireguard-go wireguard-tools
          ethtool gcc libc6-dev)
if [ "$want_test" -eq 1 ]; then
    packages+=(prometheus shellcheck vagrant serf systemd dnsmasq-base dnsperf tcpdump)
fi
if [ "$want_vm" -eq 1 ]; then
    packages+=(qemu-system-x86 qemu-utils mmdebstrap vagrant openssh-client e2fsprogs
               vagrant-libvirt libvirt-daemon libvirt-daemon-driver-qemu dnsmasq-base)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 2379; vxmesh runs its own.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
extras="bench"
[ "$want_test" -eq 1 ] || [ "$want_vm" -eq 1 ] && extras="test,bench"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[${extras}]"
# The CNI plugin type `vxmesh`: agent/cni/front.c compiled (gcc), handing each run to the agent
# and running agent/cni/plugin.py with the system's (or this venv's) python when it cannot.
.venv/bin/python -m agent.cni.launcher /usr/lib/cni /opt/cni/bin >/dev/null
echo "setup.sh: ready (.venv/bin/vxmesh)"
