#!/usr/bin/env bash
# Builds the vxmesh lab's Debian 12 machine image from Debian's packages (mmdebstrap, no other
# download) and, with --box, packages it as a vagrant-libvirt box. Run as root.
#
#   deploy/vagrant/build-box.sh [--cache DIR] [--box] [--add]
#
# The image is cached under DIR/debian12-KEY/ (default /var/cache/vxmesh-vm), KEY being a hash
# of this script: a second run with the same script builds nothing and prints the same paths.
#   root.img     raw ext4 file system of the whole disk (no partition table), root=/dev/vda
#   vmlinuz, initrd.img   the image's own kernel and initramfs, for direct kernel boot
#   vxmesh-debian12.box   (--box) vagrant-libvirt box: box.img (qcow2), metadata.json and a
#                Vagrantfile booting the shipped kernel (the disk has no boot loader)
# --add also runs `vagrant box add --force vxmesh/debian12 BOX`, the name the Vagrantfile uses
# when VXMESH_BOX=local.
#
# The machine: systemd, sshd, python3 + venv, iproute2, nftables, etcd (disabled until
# provision.sh enables it on the etcd node), wireguard-tools, the full Debian kernel (ipvlan,
# wireguard, ESP); /etc/hosts names localhost and the lab's node1..node3, there is no name
# server (the lab has no route out); libnss-myhostname resolves the machine's own name (set per VM at boot). User `vagrant` (password `vagrant`, passwordless sudo) accepts Vagrant's
# published insecure key, read from the installed vagrant package. Networking is
# systemd-networkd: addresses from the kernel command line (`ip=ADDR::GW:MASK:HOST:eth0:off`,
# systemd-network-generator) and otherwise DHCP on eth0 (Vagrant's management network).
set -euo pipefail

cache=/var/cache/vxmesh-vm
want_box=0
want_add=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --cache) cache=${2:?--cache needs a directory}; shift ;;
        --box) want_box=1 ;;
        --add) want_box=1; want_add=1 ;;
        *) echo "build-box.sh: unknown option '$1' (known: --cache DIR, --box, --add)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "build-box.sh: run as root (mmdebstrap builds the root file system as root)" >&2
    exit 1
fi
for tool in mmdebstrap mkfs.ext4 qemu-img; do
    command -v "$tool" >/dev/null || {
        echo "build-box.sh: '$tool' is missing (deploy/setup.sh --vm installs it)" >&2; exit 1; }
done
insecure_key=$(find /usr/share/rubygems-integration/all/gems -path '*/vagrant-*/keys/vagrant.pub' \
               2>/dev/null | sort | tail -n 1)
if [ -z "$insecure_key" ]; then
    echo "build-box.sh: Vagrant's insecure public key not found (install the vagrant package)" >&2
    exit 1
fi

packages=systemd-sysv,linux-image-amd64,udev,kmod,openssh-server,sudo,python3,python3-venv
packages+=,iproute2,nftables,iputils-ping,procps,etcd-server,etcd-client,wireguard-tools,rsync
packages+=,ifupdown,ca-certificates,libnss-myhostname
key=$(sha256sum "$0" | cut -c1-12)
out="$cache/debian12-$key"

if [ ! -f "$out/root.img" ]; then
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    started=$(date +%s)
    # The hooks run in the build's shell with the root directory as $1 (single quotes on purpose).
    # shellcheck disable=SC2016
    mmdebstrap --quiet --variant=minbase --include="$packages" \
        --customize-hook='chroot "$1" systemctl enable systemd-networkd >/dev/null 2>&1' \
        --customize-hook='chroot "$1" systemctl disable etcd >/dev/null 2>&1 || true' \
        --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true' \
        --customize-hook='chroot "$1" useradd --create-home --shell /bin/bash --groups sudo vagrant' \
        --customize-hook='echo vagrant:vagrant | chroot "$1" chpasswd' \
        --customize-hook='install -d -m 0700 -o 1000 -g 1000 "$1/home/vagrant/.ssh"' \
        --customize-hook="install -m 0600 -o 1000 -g 1000 '$insecure_key' \"\$1/home/vagrant/.ssh/authorized_keys\"" \
        --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"; chmod 0440 "$1/etc/sudoers.d/vagrant"' \
        --customize-hook='echo "/dev/vda / ext4 rw,relatime 0 1" > "$1/etc/fstab"; echo vxmesh > "$1/etc/hostname"' \
        --customize-hook='printf "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n" > "$1/etc/systemd/network/99-eth0-dhcp.network"' \
        --customize-hook='printf "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n192.168.56.11 node1\n192.168.56.12 node2\n192.168.56.13 node3\n" > "$1/etc/hosts"' \
        --customize-hook='echo "# no name server: the lab has no route out" > "$1/etc/resolv.conf"' \
        --customize-hook='echo "UseDNS no" > "$1/etc/ssh/sshd_config.d/vxmesh-lab.conf"' \
        bookworm "$work/root" http://deb.debian.org/debian
    cp "$work"/root/boot/vmlinuz-* "$work/vmlinuz"
    cp "$work"/root/boot/initrd.img-* "$work/initrd.img"
    truncate -s 3G "$work/root.img"
    mkfs.ext4 -q -F -L vxmesh-root -d "$work/root" "$work/root.img"
    rm -rf "$work/root"
    echo "$(( $(date +%s) - started ))" > "$work/build_seconds"
    rm -rf "$out"
    mv "$work" "$out"
    trap - EXIT
fi

if [ "$want_box" -eq 1 ] && [ ! -f "$out/vxmesh-debian12.box" ]; then
    boxdir=$(mktemp -d "$out/box.XXXXXX")
    qemu-img convert -O qcow2 "$out/root.img" "$boxdir/box.img"
    cp "$out/vmlinuz" "$out/initrd.img" "$boxdir/"
    size_gb=$(( $(stat -c %s "$out/root.img") / 1024 / 1024 / 1024 ))
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$size_gb" \
        > "$boxdir/metadata.json"
    cat > "$boxdir/Vagrantfile" <<'RUBY'
# vxmesh/debian12: the disk is one ext4 file system without a boot loader; boot the kernel
# shipped in this box.
BOX_DIR = File.expand_path(__dir__)
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.driver = "qemu"
    lv.kernel = File.join(BOX_DIR, "vmlinuz")
    lv.initrd = File.join(BOX_DIR, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
    lv.disk_bus = "virtio"
  end
end
RUBY
    tar -C "$boxdir" -cf "$out/vxmesh-debian12.box.part" metadata.json Vagrantfile box.img vmlinuz initrd.img
    mv "$out/vxmesh-debian12.box.part" "$out/vxmesh-debian12.box"
    rm -rf "$boxdir"
fi
if [ "$want_add" -eq 1 ]; then
    vagrant box add --force --name vxmesh/debian12 "$out/vxmesh-debian12.box" >/dev/null
fi

echo "image=$out/root.img"
echo "kernel=$out/vmlinuz"
echo "initrd=$out/initrd.img"
echo "build_seconds=$(cat "$out/build_seconds")"
[ -f "$out/vxmesh-debian12.box" ] && echo "box=$out/vxmesh-debian12.box"
exit 0
