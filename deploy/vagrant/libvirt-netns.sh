#!/usr/bin/env bash
# Runs vagrant commands (`up --provider=libvirt`, `ssh`, `halt`, ...) against a libvirtd of its
# own: libvirtd and virtlogd run inside a network namespace made for DIR and a private mount
# namespace, so the networks vagrant-libvirt defines (bridges, dnsmasq) and the VMs' taps live
# in that namespace and nothing is added to this machine's interfaces; libvirt's state,
# Vagrant's boxes (VAGRANT_HOME) and the VMs' disks stay under DIR. Run as root from
# deploy/vagrant/.
#
#   VXMESH_WHEELHOUSE=WHEELS deploy/vagrant/libvirt-netns.sh DIR up --provider=libvirt
#   deploy/vagrant/libvirt-netns.sh DIR ssh node1 -c 'sudo vxmesh members'
#   deploy/vagrant/libvirt-netns.sh DIR down     # destroy the VMs, stop libvirtd, delete netns
#
# The namespace (`${VXMESH_LV_PREFIX:-vxlv}` and a checksum of DIR) and libvirtd stay up
# between commands (the VMs live in that namespace); `down` runs `vagrant destroy -f`, stops
# libvirtd and virtlogd (by their pid files), then every process left in the namespace (its
# networks' dnsmasq outlive libvirtd; a qemu destroy missed) and deletes the namespace; it
# fails, keeping the namespace, if a process would not end. Needs Debian's vagrant-libvirt, libvirt-daemon, libvirt-daemon-driver-qemu,
# dnsmasq-base (deploy/setup.sh --vm) and the local box: `build-box.sh --box` is added to DIR's
# VAGRANT_HOME as vxmesh/debian12 and used (VXMESH_BOX=local). The machines have no route out:
# set VXMESH_WHEELHOUSE to a directory of wheels (`pip wheel -w WHEELS .`) for provision.sh;
# without KVM also VXMESH_START_TIMEOUT=600s (the agent's first start under TCG).
set -euo pipefail

dir=${1:?usage: libvirt-netns.sh DIR VAGRANT-ARGS... | DIR down}
shift
if [ "$(id -u)" -ne 0 ]; then
    echo "libvirt-netns.sh: run as root (network and mount namespaces, libvirtd)" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
netns="${VXMESH_LV_PREFIX:-vxlv}$(printf '%s' "$dir" | cksum | cut -c1-6)"
pids=$dir/libvirt/run/libvirt
# Ends one process of this run: only one inside the run's namespace (a stale pid file never
# names another process), TERM, then KILL after 10 s.
stop_pid() {
    [ "$(ip netns identify "$1" 2>/dev/null)" = "$netns" ] || return 0
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.25; done
    kill -9 "$1" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.25; done
}
if [ "${1:-}" = "down" ]; then
    if ! ip netns list | grep -q "^$netns\b"; then
        echo "libvirt-netns.sh: no namespace $netns (already down)"
        exit 0
    fi
    "$0" "$dir" destroy -f || true
    for pidfile in "$pids"/libvirtd.pid "$pids"/virtlogd.pid; do
        [ -f "$pidfile" ] && stop_pid "$(cat "$pidfile")"
        rm -f "$pidfile"
    done
    # What libvirt started and left (its networks' dnsmasq and their helpers outlive libvirtd,
    # a qemu that destroy missed): every process still in the namespace is this run's.
    for pid in $(ip netns pids "$netns"); do
        stop_pid "$pid"
    done
    left=$(ip netns pids "$netns" | tr '\n' ' ')
    if [ -n "$left" ]; then
        echo "libvirt-netns.sh: processes still in $netns: $left (namespace kept)" >&2
        exit 1
    fi
    ip netns del "$netns"
    rm -f "$pids"/network/*.pid "$pids"/qemu/*.pid
    echo "libvirt-netns.sh: $netns and its libvirtd are gone"
    exit 0
fi
box=$("$here/build-box.sh" --box | sed -n 's/^box=//p')
if ! ip netns list | grep -q "^$netns\b"; then
    ip netns add "$netns"
    ip -n "$netns" link set lo up
fi

export VXMESH_LV_DIR="$dir" VXMESH_LV_BOX="$box" VXMESH_BOX=local VAGRANT_HOME="$dir/vagrant.d"
# The inner script is single-quoted on purpose: it expands its variables itself.
# shellcheck disable=SC2016
exec ip netns exec "$netns" unshare --mount --propagation private bash -euo pipefail -c '
    state=$VXMESH_LV_DIR/libvirt
    for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /etc/libvirt /var/log/libvirt; do
        mkdir -p "$state$d" "$d"
        mount --bind "$state$d" "$d"
    done
    # The qemu driver resolves its default user (libvirt-qemu) before it reads qemu.conf:
    # give it one in private copies of passwd and group (this mount namespace only).
    cp /etc/passwd "$state/passwd"
    cp /etc/group "$state/group"
    echo "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin" >> "$state/passwd"
    printf "libvirt-qemu:x:64055:\nlibvirt:x:64056:\n" >> "$state/group"
    mount --bind "$state/passwd" /etc/passwd
    mount --bind "$state/group" /etc/group
    running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
    if ! running /run/libvirt/libvirtd.pid; then
        printf "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nsecurity_driver = \"none\"\n" \
            > /etc/libvirt/qemu.conf
        mkdir -p /var/lib/libvirt/images /var/lib/libvirt/qemu /var/lib/libvirt/dnsmasq
        rm -f /run/libvirt/libvirt-sock
        running /run/libvirt/virtlogd.pid || virtlogd -d -p /run/libvirt/virtlogd.pid
        libvirtd -d -p /run/libvirt/libvirtd.pid
        for _ in $(seq 1 60); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.5; done
    fi
    vagrant box list 2>/dev/null | grep -q "^vxmesh/debian12 " ||
        vagrant box add --name vxmesh/debian12 "$VXMESH_LV_BOX" >/dev/null
    exec vagrant "$@"
' libvirt-netns "$@"
