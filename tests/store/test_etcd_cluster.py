"""The store against real etcd clusters of three members on loopback: failover, watches that
resume on another member, TLS, auth, and values damaged by hand with etcdctl.

Each cluster starts in about 1.5 s (etcd's own raft timings: 100 ms heartbeat, 1 s election).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from agent.config import AgentConfigError, StoreConfig, build_config
from agent.lab.certs import LabCA
from agent.lab.etcd_local import ETCD_BINARY, LocalCluster, LocalEtcd
from agent.store.connect import build_client, check_access, open_store
from agent.store.errors import StoreUnavailable
from agent.store.etcd_client import EtcdClient, EtcdEndpoint, Get
from agent.store.network_view import KeyChange, NetworkEvent
from agent.store.schema import (
    Block,
    IPAddress,
    Network,
    block_key,
    blocks_prefix,
    encode,
    network_key,
    prefix_end,
    validate_network,
    validate_policy,
)
from agent.store.service import Store
from tests.polling import wait_until
from tests.store.etcd_reads import inspect_network, list_networks
from tests.store.test_store_etcd import stored_allocations

pytestmark = pytest.mark.etcd
ETCDCTL = "/usr/bin/etcdctl"


def _need_etcd() -> None:
    if not os.path.exists(ETCD_BINARY) or not os.path.exists(ETCDCTL):
        pytest.skip("needs etcd-server and etcd-client (etcdctl)")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    _need_etcd()
    with LocalCluster(tmp_path / "cluster", 3) as running:
        yield running


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    _need_etcd()
    with LocalCluster(tmp_path / "tls", 3, tls=True, revoked_clients=["revoked"]) as running:
        yield running


def etcdctl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    """Run etcdctl against the whole cluster (with the client certificate under TLS)."""
    argv = [ETCDCTL, f"--endpoints={','.join(cluster.urls)}", "--command-timeout=5s"]
    if cluster.ca is not None and cluster.client_cert is not None:
        argv += [f"--cacert={cluster.ca.cert_path}", f"--cert={cluster.client_cert.cert}",
                 f"--key={cluster.client_cert.key}"]
    answer = subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True,
                            timeout=15, env={**os.environ, "ETCDCTL_API": "3"}, check=False)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


def client_of(cluster: LocalCluster) -> EtcdClient:
    endpoints = [EtcdEndpoint("127.0.0.1", m.client_port, m.tls is not None)
                 for m in cluster.members]
    return EtcdClient(endpoints)


def store_of(cluster: LocalCluster, seed: int, order: Sequence[int] = (0, 1, 2)) -> Store:
    endpoints = [EtcdEndpoint("127.0.0.1", cluster.members[i].client_port) for i in order]
    return Store(EtcdClient(endpoints, timeout=8.0, member_timeout=1.0),
                 rng=random.Random(seed), backoff_max=0.5)


def leader(cluster: LocalCluster) -> LocalEtcd:
    client = client_of(cluster)
    try:
        for member, status in zip(cluster.members, client.member_statuses(), strict=True):
            if not status.error and status.member_id != 0 \
                    and status.member_id == status.leader_id:
                return member
    finally:
        client.close()
    raise AssertionError("no leader")


async def test_leader_killed_while_every_host_creates_endpoints(cluster: LocalCluster) -> None:
    """Three hosts allocate and confirm addresses while the leader is SIGKILLed: every call
    returns (after a bounded wait), no address is lost or handed out twice."""
    setup = store_of(cluster, 0)
    network = await setup.create_network(
        validate_network(name="n", subnet="10.1.0.0/22", block_prefix=28))
    # Each host prefers a different member, as the lab configures them.
    stores = [store_of(cluster, i, order=[(i + k) % 3 for k in range(3)]) for i in range(3)]
    pools = [await s.open_address_pool("n", f"h{i}") for i, s in enumerate(stores)]
    done: dict[str, IPAddress] = {}
    waits: list[float] = []
    killed = trio.Event()

    async def host(i: int) -> None:
        for j in range(40):
            handle = f"h{i}/ep{j}"
            start = trio.current_time()
            await pools[i].allocate(handle)
            done[handle] = await pools[i].confirm(handle)
            waits.append(trio.current_time() - start)
            if j == 10 and i == 0:
                victim = leader(cluster)
                await trio.to_thread.run_sync(victim.kill)
                killed.set()
            if j == 10:
                await killed.wait()

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(host, i)
    assert len(done) == 120
    rows = await stored_allocations(setup)
    assert sorted(h for _, h, _ in rows) == sorted(done)
    assert len({a for a, _, _ in rows}) == 120  # none handed out twice
    assert {a: h for a, h, _ in rows} == {a: h for h, a in done.items()}
    assert all(a in network.subnet for a in done.values())
    assert max(waits) < 8.0  # bounded by the store timeout: failover, no error
    assert sum(s.client.failovers for s in stores) >= 1
    for store in (setup, *stores):
        store.close()


async def test_a_hung_member_is_left_within_the_member_timeout_and_used_again(
        cluster: LocalCluster) -> None:
    """SIGSTOP stands for a member cut off from us (nothing answers): the next call moves on
    after `member_timeout`; once it answers again the client goes back to it."""
    store = store_of(cluster, 1)
    first = cluster.members[0]
    assert store.client.current_member().port == first.client_port
    await store.create_network(validate_network(name="a", subnet="10.2.0.0/24"))
    assert first.pid is not None
    os.kill(first.pid, 19)  # SIGSTOP
    try:
        failovers_before = store.client.failovers
        await store.create_network(validate_network(name="b", subnet="10.3.0.0/24"))
        # The write landed on another member after the hung one was marked down (no timing
        # bound here: the machine is shared; bench/store.py measures failover against the election).
        assert store.client.failovers > failovers_before
        assert store.client.current_member().port != first.client_port
        assert first.client_port in {e.port for e in store.client.down_members()}
    finally:
        os.kill(first.pid, 18)  # SIGCONT
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: store.run_health_probe(
            member_interval=0.1, task_status=task_status))
        # (on a loaded machine another member may have been left too, for being slow: the
        # probe brings every member back once it answers)
        await wait_until(lambda: store.client.current_member().port == first.client_port
                         and store.statistics().members_down == 0,
                         "the client back on the first member, none left down", 30.0)
        nursery.cancel_scope.cancel()
    assert {n.name for n in await list_networks(store)} == {"a", "b"}
    store.close()


async def test_a_member_without_leader_refuses_at_once(cluster: LocalCluster) -> None:
    """With two members gone the last one has no leader: a call fails fast (require-leader)
    instead of hanging on a member that cannot commit."""
    survivor = cluster.members[2]
    for member in cluster.members[:2]:
        member.kill()
    client = EtcdClient([EtcdEndpoint("127.0.0.1", survivor.client_port)], timeout=1.5)

    def lost_its_leader() -> bool:
        return client.member_statuses()[0].leader_id == 0 or bool(
            client.member_statuses()[0].error)

    await wait_until(lost_its_leader, "the survivor to lose its leader", 15)
    # "no leader" is the member's own refusal: a member that hung would end in a deadline.
    with pytest.raises(StoreUnavailable, match="no leader"):
        client.range("/vxmesh/v1/networks/")
    client.close()


async def test_watch_resumes_on_another_member_without_missed_or_repeated_events(
        cluster: LocalCluster) -> None:
    watcher = store_of(cluster, 2)
    writer = store_of(cluster, 3, order=(2, 1, 0))
    seen: list[KeyChange] = []
    view = watcher.network_view
    real_apply = view.apply

    def recording_apply(changes: Iterable[KeyChange], revision: int = 0) -> list[NetworkEvent]:
        changes = list(changes)
        seen.extend(changes)
        return real_apply(changes, revision)

    view.apply = recording_apply  # type: ignore[method-assign]
    created: list[Network] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run_network_watch)
        nursery.start_soon(watcher.run_health_probe)
        await wait_until(lambda: view.listed, "the first listing")
        for i in range(30):
            created.append(await writer.create_network(
                validate_network(name=f"w{i}", subnet=f"10.{10 + i}.0.0/24")))
            if i == 10:  # the member the watch streams from dies
                await trio.to_thread.run_sync(cluster.members[0].kill)
        await wait_until(lambda: len(view.networks) == 30, "all 30 networks watched", 20)
        nursery.cancel_scope.cancel()
    revisions = [c.mod_revision for c in seen]
    assert revisions == sorted(set(revisions)), "an event was repeated or out of order"
    assert [c.key for c in seen] == [network_key(n.name) for n in created]
    assert watcher.statistics().watch_resumes >= 1
    watcher.close()
    writer.close()


async def test_policy_watch_resumes_on_another_member_and_streams_without_round_trips(
        cluster: LocalCluster) -> None:
    watcher = store_of(cluster, 6)
    writer = store_of(cluster, 7, order=(2, 1, 0))
    await writer.create_network(validate_network(name="p", subnet="10.30.0.0/24"))
    view = watcher.policy_view
    before = watcher.client.round_trips
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run_policy_watch)
        nursery.start_soon(watcher.run_health_probe)
        # The listing, then the watch's opening (on a thread, after `listed` is set).
        await wait_until(lambda: view.listed and watcher.client.round_trips == before + 2,
                         "the first policy listing and the watch's opening")
        listed_at = watcher.client.round_trips
        for i in range(12):
            await writer.create_policy(validate_policy(
                name=f"p{i}", network="p", direction="ingress", select=f"app=s{i}",
                allow=["app=c"]))
            await wait_until(lambda i=i: f"p{i}" in view.policies, f"policy p{i} watched", 20)
            if i == 5:
                assert watcher.client.round_trips == listed_at  # streamed, never asked for
                await trio.to_thread.run_sync(cluster.members[0].kill)  # the watch's member
        await writer.delete_policy("p0")
        await wait_until(lambda: "p0" not in view.policies, "p0's delete watched", 20)
        nursery.cancel_scope.cancel()
    assert sorted(view.policies) == sorted(f"p{i}" for i in range(1, 12))
    assert watcher.statistics().watch_resumes >= 1
    watcher.close()
    writer.close()


async def test_values_damaged_with_etcdctl_never_change_what_the_agent_uses(
        cluster: LocalCluster) -> None:
    store = store_of(cluster, 4)
    network = await store.create_network(
        validate_network(name="n", subnet="10.1.0.0/24", block_prefix=28, mtu=1400))
    view = store.network_view
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_network_watch)
        await wait_until(lambda: "n" in view.networks, "network n watched")
        # A typo in the mode, then an MTU the data plane cannot use, then not even JSON.
        for damaged in (dict(network.to_json(), mode="overlya"),
                        dict(network.to_json(), mtu=1000)):
            etcdctl(cluster, "put", network_key("n"), json.dumps(damaged))
            await wait_until(lambda: store.statistics().rejected_values == 1, "one rejected value")
            assert view.networks["n"] == network  # the last good copy
        etcdctl(cluster, "put", network_key("n"), "{not json")
        await wait_until(lambda: store.statistics().malformed_records == 1, "one malformed")
        assert view.networks["n"] == network
        # Put right again: the rejection clears.
        etcdctl(cluster, "put", network_key("n"), encode(network).decode())
        await wait_until(lambda: store.statistics().rejected_values == 0, "no rejected value")
        nursery.cancel_scope.cancel()

    # Blocks written by hand: a /24 block (wrong size), one outside the subnet, and our own
    # block overwritten with garbage. Allocation goes on; the foreign blocks hand out nothing.
    pool = await store.open_address_pool("n", "h1")
    first = await pool.allocate("h1/a")
    await pool.flush()
    ours = block_key("n", next(b.cidr for b in (await inspect_network(store, "n")).blocks))
    wrong_size = Block("n", ipaddress.ip_network("10.1.0.0/24"), "h9", {})
    outside = Block("n", ipaddress.ip_network("10.9.0.0/28"), "h9", {})
    etcdctl(cluster, "put", block_key("n", wrong_size.cidr), encode(wrong_size).decode())
    etcdctl(cluster, "put", block_key("n", outside.cidr), encode(outside).decode())
    etcdctl(cluster, "put", ours, "garbage")
    fresh = await store.open_address_pool("n", "h2")
    addresses = [await fresh.allocate(f"h2/e{i}") for i in range(20)]
    await fresh.flush()
    assert all(a in network.subnet and a != first for a in addresses)
    assert len(set(addresses)) == 20
    # h1 finds its block unreadable at the next re-read and writes its copy back.
    prefix = blocks_prefix("n")
    pool.resync((await store.txn([], [Get(prefix, prefix_end(prefix))])).ranges[0])
    await pool.flush()
    info = await inspect_network(store, "n")
    assert {b.host for b in info.blocks} == {"h1", "h2"}
    assert (first, "h1/a", "h1") in await stored_allocations(store)
    assert store.statistics().rejected_values == 2  # the two hand-made blocks
    store.close()


async def test_mutual_tls_cluster_serves_the_store(tls_cluster: LocalCluster) -> None:
    config = tls_config(tls_cluster)
    store = await open_store(config, rng=random.Random(5))
    before = store.client.round_trips
    await store.create_network(validate_network(name="t", subnet="10.5.0.0/24"))
    pool = await store.open_address_pool("t", "h1")
    for i in range(100):
        await pool.allocate(f"h1/{i}")
    await pool.flush()
    # TLS adds no round trip: the same count as over plain text (3 to create, 2 to open, one
    # transaction per claim and per flush).
    assert store.client.round_trips - before <= 3 + 2 + 2 * 2
    assert (await inspect_network(store, "t")).endpoints == 100
    store.close()


@pytest.mark.parametrize("case", ["wrong CA", "no client cert", "other CA's client cert",
                                  "revoked client cert", "expired client cert"])
def test_tls_mistakes_stop_start_up_naming_the_key(tls_cluster: LocalCluster, case: str,
                                                   tmp_path: Path) -> None:
    assert tls_cluster.ca is not None
    other = LabCA(tmp_path / "other")
    stranger = other.issue("stranger", client=True)
    expired = tls_cluster.ca.issue(
        "expired", client=True, valid_for=datetime.timedelta(hours=1),
        valid_from=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1))
    revoked = tls_cluster.revoked["revoked"]
    overrides, key = {
        "wrong CA": ({"ca_file": str(other.cert_path)}, "store.ca_file"),
        "no client cert": ({"cert_file": "", "key_file": ""}, "store.cert_file"),
        "other CA's client cert": ({"cert_file": str(stranger.cert),
                                    "key_file": str(stranger.key)}, "store.cert_file"),
        "revoked client cert": ({"cert_file": str(revoked.cert), "key_file": str(revoked.key)},
                                "store.cert_file"),
        "expired client cert": ({"cert_file": str(expired.cert), "key_file": str(expired.key)},
                                "store.cert_file"),
    }[case]
    config = tls_config(tls_cluster, **overrides)
    with pytest.raises(AgentConfigError) as caught:
        check_access(build_client(config), config)
    message = str(caught.value)
    assert message.startswith(key) and "\n" not in message
    if case == "expired client cert":
        assert "expired on" in message


async def test_auth_token_is_renewed_and_a_wrong_password_stops_start_up(
        tmp_path: Path) -> None:
    _need_etcd()
    server = LocalEtcd(tmp_path / "auth-etcd")
    server.start()
    try:
        url = server.client_url
        for args in (["user", "add", "root:rootpw"], ["user", "add", "vxmesh:s3cret"],
                     ["role", "add", "vxmesh"],
                     ["role", "grant-permission", "vxmesh", "--prefix=true", "readwrite",
                      "/vxmesh/"],
                     ["user", "grant-role", "vxmesh", "vxmesh"], ["auth", "enable"]):
            subprocess.run([ETCDCTL, f"--endpoints={url}", "--user=root:rootpw", *args],
                           check=True, capture_output=True, timeout=15,
                           env={**os.environ, "ETCDCTL_API": "3"})
        password = tmp_path / "password"
        password.write_text("s3cret\n")
        config = auth_config(url, password)
        store = await open_store(config, rng=random.Random(6))
        await store.create_network(validate_network(name="a", subnet="10.6.0.0/24"))
        # etcd forgets its simple tokens when it restarts: the client takes a new one.
        await trio.to_thread.run_sync(server.restart)
        await store.create_network(validate_network(name="b", subnet="10.7.0.0/24"))
        assert {n.name for n in await list_networks(store)} == {"a", "b"}
        store.close()
        password.write_text("wrong\n")
        with pytest.raises(AgentConfigError,
                           match=r"^store.password_file: .*authentication failed"):
            await open_store(auth_config(url, password), rng=random.Random(7))
    finally:
        server.stop()


# -- helpers -----------------------------------------------------------------------------------


def tls_config(cluster: LocalCluster, **overrides: str) -> StoreConfig:
    assert cluster.ca is not None and cluster.client_cert is not None
    store = {"endpoints": cluster.urls, "ca_file": str(cluster.ca.cert_path),
             "cert_file": str(cluster.client_cert.cert),
             "key_file": str(cluster.client_cert.key), "timeout": 5.0}
    store.update(overrides)
    return build_config({"store": store}).store


def auth_config(url: str, password: Path) -> StoreConfig:
    return build_config({"store": {"endpoints": [url], "username": "vxmesh",
                                   "password_file": str(password)}}).store


