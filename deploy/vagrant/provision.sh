#!/usr/bin/env bash
# Provisions one vxmesh lab machine (run by Vagrant as root). Environment, set by the
# Vagrantfile: VXMESH_NODE, VXMESH_ADDRESS, VXMESH_ETCD_URL, VXMESH_SEEDS (comma-separated
# host:port), VXMESH_GOSSIP_KEY (base64), VXMESH_RUN_ETCD (1 on the etcd machine).
# Optional: VXMESH_WHEELHOUSE, a directory with vxmesh's wheel and its dependencies' (pip then
# installs from it alone: the VM tier's machines have no route out). VXMESH_START_TIMEOUT, a
# systemd time span: the unit's TimeoutStartSec for this machine (a drop-in; under qemu's TCG
# emulation the agent's first start, which byte-compiles its modules, takes minutes, more than
# the unit's 90 s). Debian packages already installed (the local box has them all) are not
# fetched again.
set -euo pipefail

: "${VXMESH_NODE:?}" "${VXMESH_ADDRESS:?}" "${VXMESH_ETCD_URL:?}" "${VXMESH_SEEDS:?}"
: "${VXMESH_GOSSIP_KEY:?}" "${VXMESH_RUN_ETCD:=0}" "${VXMESH_WHEELHOUSE:=}"
: "${VXMESH_START_TIMEOUT:=}"

src=/opt/vxmesh/src
venv=/opt/vxmesh/venv

export DEBIAN_FRONTEND=noninteractive
packages=(iproute2 nftables python3-venv iputils-ping)
if [ "$VXMESH_RUN_ETCD" = "1" ]; then
    packages+=(etcd-server etcd-client)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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
if [ -n "$VXMESH_WHEELHOUSE" ]; then
    wheel=$(ls "$VXMESH_WHEELHOUSE"/vxmesh-*.whl)
    # The same version number: a second provisioning reinstalls the wheel (not its deps).
    reinstall=()
    "$venv/bin/pip" show -q vxmesh >/dev/null 2>&1 && reinstall=(--force-reinstall --no-deps)
    "$venv/bin/pip" install -q --no-compile --no-index --find-links "$VXMESH_WHEELHOUSE" \
        "${reinstall[@]}" \
        "$wheel"
else
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    "$venv/bin/pip" install -q "$src"
fi
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

# An agent's first start needs etcd to answer (it has no copy of the networks yet): wait for
# etcd's /health first (etcd was just restarted on node1; on a slow machine it takes a while).
"$venv/bin/python" - "$VXMESH_ETCD_URL/health" <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 300
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
            if b'"true"' in answer.read():
                break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"provision: etcd at {sys.argv[1]} not healthy within 300 s: {exc}")
    time.sleep(2)
PY

install -m 0644 "$src/deploy/systemd/vxmesh-agent.service" /etc/systemd/system/
dropin=/etc/systemd/system/vxmesh-agent.service.d/start-timeout.conf
if [ -n "$VXMESH_START_TIMEOUT" ]; then
    install -d -m 0755 "$(dirname "$dropin")"
    printf '[Service]\nTimeoutStartSec=%s\n' "$VXMESH_START_TIMEOUT" > "$dropin"
else
    rm -f "$dropin"
fi
systemctl daemon-reload
systemctl enable vxmesh-agent >/dev/null 2>&1
# A first start exits 1 when etcd misses store.timeout (2 s). `vagrant up` provisions the
# machines in parallel, so the others start their agents while the etcd machine is still busy
# provisioning itself: under TCG etcd answered /health above and still missed the 2 s
# (node2's first start, 2026-12-01). Up to three starts, each failure's reason shown.
for attempt in 1 2 3; do
    systemctl restart vxmesh-agent && break
    reason=$(journalctl -u vxmesh-agent -o cat -n 50 --no-pager | grep 'cannot start' | tail -n 1)
    echo "provision: start $attempt of 3 of the agent failed: ${reason:-see journalctl -u vxmesh-agent}" >&2
    [ "$attempt" -lt 3 ] || exit 1
    sleep 5
done
echo "provision: ${VXMESH_NODE} ready (vxmesh members, vxmesh status)"
