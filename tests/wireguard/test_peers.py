"""The pure WireGuard core: tunnel addresses, the wanted peer set, the diff; and what desired
state does with an encrypted network."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agent.runtime.gossip_link import encode_meta, wireguard_keys_of, wireguard_of
from agent.runtime.wireguard_link import WireGuardLink
from gossip.swim import Member
from gossip.wire import MemberState
from overlay.desired import (
    AliveMember,
    EndpointEntry,
    FdbKey,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)
from underlay.wireguard import (
    WireGuardSupport,
    key_file,
    load_private_key,
    pending_key_file,
    probe_wireguard,
    public_key_of,
    write_private_key,
)
from underlay.wireguard_peers import (
    MAX_DRAIN,
    MIN_DRAIN,
    PREPARE_KEEPALIVE,
    PREPARE_TIMEOUT,
    QUIET,
    PublishedKey,
    Rotation,
    WireGuardPeer,
    peer_changes,
    tunnel_address,
    wanted_peers,
    wireguard_mtu,
)


def test_tunnel_address_is_derived_inside_the_tunnel_network() -> None:
    assert tunnel_address("10.77.0.11") == "100.77.0.11"
    # The second slot (a key rotation's new interface) lies in the other half of the /10.
    assert tunnel_address("10.77.0.11", 1) == "100.109.0.11"
    assert tunnel_address("fd00::1", 1) != tunnel_address("fd00::1")
    assert tunnel_address("192.168.1.5") != tunnel_address("192.168.1.6")
    assert tunnel_address("fd00::1").startswith("100.")
    assert wireguard_mtu(1500, "10.0.0.1") == 1440
    assert wireguard_mtu(1500, "fd00::1") == 1420


def _pub(node: str, key: str, tunnel: str, vtep: str = "10.0.0.9") -> PublishedKey:
    return PublishedKey(node, vtep, key, tunnel, 51820)


def test_one_peer_per_other_member_and_clashes_are_named() -> None:
    wanted = wanted_peers([_pub("a", "KA", "100.64.0.1"), _pub("b", "KB", "100.64.0.2"),
                           _pub("c", "KC", "100.64.0.2"), _pub("d", "KD", "8.8.8.8"),
                           _pub("e", "KE", "nonsense")], node="a", own_key="KA")
    assert wanted.peers == {}
    assert len(wanted.problems) == 4  # b and c share a tunnel, d outside, e not an address
    good = wanted_peers([_pub("a", "KA", "100.64.0.1"), _pub("b", "KB", "100.64.0.2", "fd::2")],
                        node="a", own_key="KA")
    assert good.peers == {"KB": WireGuardPeer("KB", "fd::2", 51820, "100.64.0.2")}
    assert good.peers["KB"].endpoint == "[fd::2]:51820"
    # A member publishing our own key is not a peer.
    assert wanted_peers([_pub("x", "KA", "100.64.0.3")], node="a", own_key="KA").peers == {}


def test_changes_put_new_and_changed_then_remove_gone() -> None:
    old = WireGuardPeer("K1", "10.0.0.1", 51820, "100.64.0.1")
    moved = WireGuardPeer("K1", "10.0.0.7", 51820, "100.64.0.1")
    gone = WireGuardPeer("K2", "10.0.0.2", 51820, "100.64.0.2")
    changes = peer_changes({"K1": old, "K2": gone}, {"K1": moved})
    assert changes.put == (moved,) and changes.remove == ("K2",)
    assert not peer_changes({"K1": old}, {"K1": old})


def test_an_encrypted_network_uses_tunnel_addresses_and_its_own_mtu() -> None:
    underlay = UnderlayView("10.0.0.1", 1500)
    networks = [NetworkSpec("secret", 4096, encrypted=True), NetworkSpec("plain", 4097)]
    members = [AliveMember("b", "10.0.0.2", "100.64.0.2")]
    endpoints = [EndpointEntry("secret", "b", "02:00:00:00:00:01", ("10.1.0.2",)),
                 EndpointEntry("plain", "b", "02:00:00:00:00:02", ("10.2.0.2",))]
    state = compute_desired(networks, members, endpoints, [], underlay, "a", "100.64.0.1")
    assert state.networks["vxtun4096"].local == "0.0.0.0"  # the source: the tunnel route's
    assert state.networks["vxtun4096"].mtu == 1390
    assert state.networks["vxtun4097"].local == "10.0.0.1"
    assert state.networks["vxtun4097"].mtu == 1450
    assert state.fdb[FdbKey("vxtun4096", "02:00:00:00:00:01")] == "100.64.0.2"
    assert state.fdb[FdbKey("vxtun4097", "02:00:00:00:00:02")] == "10.0.0.2"
    # WireGuard not up yet: the encrypted network waits, the plain one does not.
    waiting = compute_desired(networks, members, endpoints, [], underlay, "a")
    assert set(waiting.networks) == {"vxtun4097"}
    assert any("encrypted" in p for p in waiting.problems)
    v6 = compute_desired(networks[:1], [], [], [], UnderlayView("fd::1", 1500), "a",
                         "100.64.0.1")
    assert v6.networks["vxtun4096"].mtu == 1370


def test_the_probe_names_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither wg nor wireguard-go nor ip
    support = trio.run(probe_wireguard)
    assert support.backend is None and "wireguard-tools" in support.missing


def test_the_private_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wireguard.key"
    key = load_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_private_key(path) == key and len(public_key_of(key)) == 44


def test_a_rotating_member_is_a_peer_under_both_keys() -> None:
    preparing = PublishedKey("b", "10.0.0.9", "KB2", "100.96.0.2", 51821, preparing=True)
    wanted = wanted_peers([_pub("b", "KB", "100.64.0.2"), preparing], node="a", own_key="KA")
    assert set(wanted.peers) == {"KB", "KB2"} and not wanted.problems
    # The new key's peer starts handshakes (keepalive) until it is the one in use.
    assert wanted.peers["KB2"].keepalive == PREPARE_KEEPALIVE
    assert wanted.peers["KB"].keepalive == 0


def test_rotation_switches_once_every_peer_shook_hands_or_gives_up() -> None:
    rotation = Rotation(started=100.0)
    assert rotation.phase == "prepare"
    assert rotation.waiting_for(["KB", "KC"], ["KC"]) == ["KB"]
    assert rotation.waiting_for(["KB"], ["KB", "KX"]) == []
    assert not rotation.expired(100.0 + PREPARE_TIMEOUT)
    assert rotation.expired(100.1 + PREPARE_TIMEOUT)
    assert not rotation.drained(1e9)  # not switched: nothing drains


def test_the_old_interface_drains_until_quiet_within_bounds() -> None:
    rotation = Rotation(started=0.0)
    rotation.switched(10.0)
    assert rotation.phase == "drain" and not rotation.expired(1e9)
    rotation.observe_old(10.0, {"KB": 500})
    assert not rotation.drained(10.0 + MIN_DRAIN - 0.1)  # never before MIN_DRAIN
    assert rotation.drained(10.0 + max(MIN_DRAIN, QUIET))
    busy = Rotation(started=0.0)
    busy.switched(10.0)
    now = 10.0
    while now < 10.0 + MAX_DRAIN:  # a member still sending under the old key keeps it
        busy.observe_old(now, {"KB": int(now * 100)})
        assert not busy.drained(now)
        now += 0.5
    assert busy.drained(10.0 + MAX_DRAIN)  # ... but not beyond MAX_DRAIN


def test_the_meta_carries_both_keys_of_a_rotation_current_first() -> None:
    keys = [PublishedKey("b", "10.0.0.2", "KB", "100.64.0.2", 51820),
            PublishedKey("b", "10.0.0.2", "KB2", "100.96.0.2", 51821, preparing=True)]
    member = Member("b", ("10.0.0.2", 7946), encode_meta("10.0.0.2", keys), MemberState.ALIVE,
                    3)
    assert wireguard_keys_of(member) == keys
    assert wireguard_of(member) == keys[0]  # the one b's traffic uses: its tunnel is the VTEP
    plain = Member("c", ("10.0.0.3", 7946), encode_meta("10.0.0.3"), MemberState.ALIVE, 1)
    assert wireguard_keys_of(plain) == [] and wireguard_of(plain) is None


def test_key_files_at_start_complete_a_cut_short_switch_and_drop_an_unfinished_rotation(
        tmp_path: Path) -> None:
    support = WireGuardSupport("wireguard-go")

    def link() -> WireGuardLink:
        return WireGuardLink("h1", support, tmp_path, "10.0.0.1", 1500, 51900)

    first = link()
    assert first.current is not None and first.current.number == 0
    assert first.published()[0].port == 51900 and first.current.tunnel == "100.64.0.1"
    # A rotation that never switched: its pending key is dropped, slot 0 stays.
    write_private_key(pending_key_file(tmp_path, 1))
    again = link()
    assert again.public_key == first.public_key and not pending_key_file(tmp_path, 1).exists()
    # A switch cut short between deleting the old key and renaming the new one: completed.
    new = write_private_key(pending_key_file(tmp_path, 1))
    key_file(tmp_path, 0).unlink()
    resumed = link()
    assert resumed.current is not None and resumed.current.number == 1
    assert resumed.public_key == public_key_of(new)
    assert resumed.published()[0].port == 51901 and resumed.current.tunnel == "100.96.0.1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wireguard.1.key"]
    assert key_file(tmp_path, 1).stat().st_mode & 0o777 == 0o600
