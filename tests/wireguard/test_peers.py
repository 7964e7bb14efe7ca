"""The pure WireGuard core: tunnel addresses, the wanted peer set, the diff; and what desired
state does with an encrypted network."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from overlay.desired import (
    AliveMember,
    EndpointEntry,
    FdbKey,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)
from underlay.wireguard import load_private_key, probe_wireguard, public_key_of
from underlay.wireguard_peers import (
    PublishedKey,
    WireGuardPeer,
    peer_changes,
    tunnel_address,
    wanted_peers,
    wireguard_mtu,
)


def test_tunnel_address_is_derived_inside_the_tunnel_network() -> None:
    assert tunnel_address("10.77.0.11") == "100.77.0.11"
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
    assert state.networks["vxtun4096"].local == "100.64.0.1"
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
