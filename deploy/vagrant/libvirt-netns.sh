#!/usr/bin/env bash
# Runs `vagrant up --provider=libvirt` (or any vagrant command) against a libvirtd of its own:
# libvirtd and virtlogd run inside a network namespace made for the run and a private mount
# namespace, so the networks vagrant-libvirt defines (bridges, dnsmasq) live in that namespace
# and nothing is added to this machine's interfaces; libvirt's state, Vagrant's boxes
# (VAGRANT_HOME) and the VMs' disks stay under DIR. Run as root from deploy/vagrant/.
#
#   deploy/vagrant/libvirt-netns.sh DIR up --provider=libvirt node1
#   deploy/vagrant/libvirt-netns.sh DIR destroy -f
#
# Needs Debian's vagrant-libvirt, libvirt-daemon, libvirt-daemon-driver-qemu, dnsmasq-base
# (deploy/setup.sh --vm) and the local box: `build-box.sh --box` is added to DIR's VAGRANT_HOME
# as vxmesh/debian12 and used (VXMESH_BOX=local). The machines have no route out: set
# VXMESH_WHEELHOUSE to a directory of wheels (`pip wheel -w DIR .`) for provision.sh.
# libvirtd is stopped when the command returns; the namespace is deleted.
set -euo pipefail

dir=${1:?usage: libvirt-netns.sh DIR VAGRANT-ARGS...}
shift
if [ "$(id -u)" -ne 0 ]; then
    echo "libvirt-netns.sh: run as root (network and mount namespaces, libvirtd)" >&2
    exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
box=$("$here/build-box.sh" --box | sed -n 's/^box=//p')
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
netns="x22lv$$"
ip netns add "$netns"
trap 'ip netns del "$netns" 2>/dev/null || true' EXIT
ip -n "$netns" link set lo up

export VXMESH_LV_DIR="$dir" VXMESH_LV_BOX="$box" VXMESH_BOX=local VAGRANT_HOME="$dir/vagrant.d"
# The inner script is single-quoted on purpose: it expands its variables itself.
# shellcheck disable=SC2016
ip netns exec "$netns" unshare --mount --propagation private bash -euo pipefail -c '
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
    printf "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nsecurity_driver = \"none\"\n" \
        > /etc/libvirt/qemu.conf
    mkdir -p /var/lib/libvirt/images /var/lib/libvirt/qemu /var/lib/libvirt/dnsmasq
    virtlogd -d -p /run/libvirt/virtlogd.pid
    libvirtd -d -p /run/libvirt/libvirtd.pid
    for _ in $(seq 1 60); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.5; done
    vagrant box list 2>/dev/null | grep -q "^vxmesh/debian12 " ||
        vagrant box add --name vxmesh/debian12 "$VXMESH_LV_BOX" >/dev/null
    rc=0
    vagrant "$@" || rc=$?
    kill "$(cat /run/libvirt/libvirtd.pid)" "$(cat /run/libvirt/virtlogd.pid)" || true
    exit "$rc"
' libvirt-netns "$@"
