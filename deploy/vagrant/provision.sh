#!/usr/bin/env bash
# Provisions one vxmesh lab machine (run by Vagrant as root). Environment, set by the
# Vagrantfile: VXMESH_NODE, VXMESH_ADDRESS, VXMESH_ETCD_URL, VXMESH_SEEDS (comma-separated
# host:port), VXMESH_GOSSIP_KEY (base64), VXMESH_RUN_ETCD (1 on the etcd machine).
set -euo pipefail

: "${VXMESH_NODE:?}" "${VXMESH_ADDRESS:?}" "${VXMESH_ETCD_URL:?}" "${VXMESH_SEEDS:?}"
: "${VXMESH_GOSSIP_KEY:?}" "${VXMESH_RUN_ETCD:=0}"

src=/opt/vxmesh/src
venv=/opt/vxmesh/venv

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
packages=(iproute2 nftables python3-venv curl iputils-ping)
if [ "$VXMESH_RUN_ETCD" = "1" ]; then
    packages+=(etcd-server etcd-client)
fi
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

if [ "$VXMESH_RUN_ETCD" = "1" ]; then
    # Debian's etcd listens on loopback only; the other machines reach it on the private network.
    # (Name and data directory stay the package's: the member was bootstrapped with them.)
    cat > /etc/default/etcd <<CONF
ETCD_LISTEN_CLIENT_URLS="${VXMESH_ETCD_URL},http://127.0.0.1:2379"
ETCD_ADVERTISE_CLIENT_URLS="${VXMESH_ETCD_URL}"
CONF
    systemctl restart etcd
    systemctl enable etcd >/dev/null 2>&1
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q "$src"
ln -sf "$venv/bin/vxmesh" /usr/local/bin/vxmesh

install -d -m 0755 /etc/vxmesh
install -d -m 0700 /var/lib/vxmesh
seed_args=()
IFS=',' read -r -a seeds <<< "$VXMESH_SEEDS"
for seed in "${seeds[@]}"; do
    seed_args+=(--seed "$seed")
done
"$venv/bin/python" -m agent.lab.provision --name "$VXMESH_NODE" --address "$VXMESH_ADDRESS" \
    --etcd "$VXMESH_ETCD_URL" "${seed_args[@]}" --output /etc/vxmesh/agent.toml

umask 077
printf '{"primary": "%s", "keys": ["%s"]}\n' "$VXMESH_GOSSIP_KEY" "$VXMESH_GOSSIP_KEY" \
    > /var/lib/vxmesh/keyring.json

install -m 0644 "$src/deploy/systemd/vxmesh-agent.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable vxmesh-agent >/dev/null 2>&1
systemctl restart vxmesh-agent
echo "provision: ${VXMESH_NODE} ready (vxmesh members, vxmesh status)"
