"""IncrementalDesired: after any sequence of changes (settled in slices of any size, resyncs
interleaved with changes) it equals the full recompute of the same inputs, and the changes it
hands over rebuild exactly that state."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.desired import (
    AliveMember,
    DesiredChanges,
    DesiredNetwork,
    DesiredState,
    EndpointEntry,
    FdbKey,
    FloodKey,
    IncrementalDesired,
    LocalEndpoint,
    NeighborKey,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)

UNDERLAY = UnderlayView("10.0.0.1", 1500)
NODE = "h1"

# Small domains, so that conflicts (one MAC or address claimed twice, one VNI used by two
# networks), bad values and the node's own entries all occur, while most values are good.
network_specs = st.sampled_from([
    NetworkSpec("a", 10), NetworkSpec("a", 12), NetworkSpec("a", 10, mtu=1400),
    NetworkSpec("a", 0), NetworkSpec("b", 11), NetworkSpec("b", 11, mtu=1490),
    NetworkSpec("b", 11, gateway="10.1.0.254/24"), NetworkSpec("b", 11, encrypted=True),
    NetworkSpec("c", 12, encrypted=True),
    NetworkSpec("c", 10)])
member_names = st.sampled_from(["h1", "h2", "h3", "h4"])
vteps = st.sampled_from(["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.2", "10.0.0.03",
                         "fd00::3", "bogus"])
macs = st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03",
                        "02:00:00:00:00:0A", "02:00:00:00:00:0a", "not-a-mac"])
ips = st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.3", "fd10::1", "FD10::1",
                       "10.1.0.300"])
entries = st.builds(EndpointEntry, st.sampled_from(["a", "b", "a", "zz"]),
                    st.sampled_from(["h1", "h2", "h3", "h4", "h2", "h3"]), macs,
                    st.lists(ips, min_size=1, max_size=2).map(tuple))
keys = st.integers(0, 5)
locals_ = st.lists(st.builds(LocalEndpoint, st.sampled_from(["a", "b"]),
                             st.sampled_from(["vxe0", "vxe1"])), max_size=3)
OPERATION = {
    "networks": st.tuples(st.just("networks"), st.lists(network_specs, min_size=1, max_size=3)),
    "locals": st.tuples(st.just("locals"), locals_),
    "member": st.tuples(st.just("member"), member_names, st.one_of(st.none(), vteps),
                        st.sampled_from([None, "10.99.0.2", "10.99.0.3", "bogus"])),
    "tunnel": st.tuples(st.just("tunnel"), st.sampled_from([None, "10.99.0.1"])),
    "put": st.tuples(st.just("put"), keys, entries),
    "remove": st.tuples(st.just("remove"), keys),
    "step": st.tuples(st.just("step"), st.integers(0, 3)),
}
#: Endpoint writes most often, settling often, the rarer inputs now and then.
WEIGHTS = ["put"] * 8 + ["remove"] * 2 + ["step"] * 4 + ["member"] * 3 + ["networks", "locals",
                                                                        "tunnel"]
operations = st.lists(st.sampled_from(WEIGHTS).flatmap(OPERATION.__getitem__),
                      min_size=8, max_size=60)

#: Where every example starts: two good networks, three good peers.
BASE: list[tuple] = [("networks", [NetworkSpec("a", 10), NetworkSpec("b", 11)]),
                     ("member", "h2", "10.0.0.2", "10.99.0.2"),
                     ("member", "h3", "10.0.0.3", "10.99.0.3"), ("member", "h4", "10.0.0.4", None),
                     ("tunnel", "10.99.0.1")]


@dataclass
class Model:
    """The inputs as a plain record, for the full recompute."""

    networks: list[NetworkSpec] = field(default_factory=list)
    local: list[LocalEndpoint] = field(default_factory=list)
    members: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    endpoints: dict[int, EndpointEntry] = field(default_factory=dict)
    tunnel: str | None = None

    def full(self) -> DesiredState:
        state = compute_desired(self.networks,
                                [AliveMember(n, v, t) for n, (v, t) in self.members.items()],
                                list(self.endpoints.values()), self.local, UNDERLAY, NODE,
                                self.tunnel)
        return DesiredState(state.networks, state.fdb, state.flood, state.neighbors,
                            tuple(sorted(state.problems)))


@dataclass
class Mirror:
    """What a consumer of `take_changes` (the reconciler) ends up believing."""

    networks: dict[str, DesiredNetwork] = field(default_factory=dict)
    fdb: dict[FdbKey, str] = field(default_factory=dict)
    flood: set[FloodKey] = field(default_factory=set)
    neighbors: dict[NeighborKey, str] = field(default_factory=dict)

    def apply(self, changes: DesiredChanges) -> None:
        if changes.networks is not None:
            self.networks = dict(changes.networks)
        for fdb_key, vtep in changes.fdb.items():
            if vtep is None:
                self.fdb.pop(fdb_key, None)
            else:
                self.fdb[fdb_key] = vtep
        for flood_key, wanted in changes.flood.items():
            if wanted:
                self.flood.add(flood_key)
            else:
                self.flood.discard(flood_key)
        for neighbor_key, mac in changes.neighbors.items():
            if mac is None:
                self.neighbors.pop(neighbor_key, None)
            else:
                self.neighbors[neighbor_key] = mac


def apply(op: tuple, model: Model, live: IncrementalDesired[int], mirror: Mirror) -> None:
    kind = op[0]
    if kind == "networks":
        model.networks = list(op[1])
        live.set_networks(op[1])
    elif kind == "locals":
        model.local = list(op[1])
        live.set_local_endpoints(op[1])
    elif kind == "member":
        _, name, vtep, tunnel = op
        if vtep is None:
            model.members.pop(name, None)
        else:
            model.members[name] = (vtep, tunnel)
        live.set_member(name, vtep, tunnel)
    elif kind == "tunnel":
        model.tunnel = op[1]
        live.set_tunnel(op[1])
    elif kind == "put":
        model.endpoints[op[1]] = op[2]
        live.put_endpoint(op[1], op[2])
    elif kind == "remove":
        model.endpoints.pop(op[1], None)
        live.remove_endpoint(op[1])
    else:
        live.step(op[1])
        mirror.apply(live.take_changes())


def settle(live: IncrementalDesired[int], mirror: Mirror) -> None:
    for _ in range(1000):
        remaining = live.step(2)
        mirror.apply(live.take_changes())
        if not remaining:
            return
    raise AssertionError("never settled")


def check(model: Model, live: IncrementalDesired[int], mirror: Mirror) -> None:
    state = live.state()
    assert state == model.full()
    assert (mirror.networks, mirror.fdb, mirror.flood, mirror.neighbors) == \
        (dict(state.networks), dict(state.fdb), set(state.flood), dict(state.neighbors))


@settings(max_examples=250, deadline=None)
@given(operations)
def test_incremental_equals_full_recompute(ops: list[tuple]) -> None:
    model, live, mirror = Model(), IncrementalDesired[int](NODE, UNDERLAY), Mirror()
    for op in BASE + ops:
        apply(op, model, live, mirror)
    settle(live, mirror)
    check(model, live, mirror)


@settings(max_examples=200, deadline=None)
@given(operations, operations, st.data())
def test_resync_interleaved_with_changes_equals_full_recompute(
        before: list[tuple], during: list[tuple], data: st.DataObject) -> None:
    """A resync feeds a snapshot taken at its start while changes keep arriving: changes are
    newer than the snapshot, and what the snapshot lacks is dropped at the end."""
    model, live, mirror = Model(), IncrementalDesired[int](NODE, UNDERLAY), Mirror()
    for op in BASE + before:
        apply(op, model, live, mirror)
    # The truth drifts away from what `live` was told (missed events), then a resync.
    drifted = data.draw(st.dictionaries(keys, entries, max_size=6), label="truth")
    model.endpoints = dict(drifted)
    truth_members = data.draw(st.dictionaries(
        member_names, st.tuples(vteps, st.sampled_from([None, "10.99.0.2", "10.99.0.3"])),
        max_size=4), label="members")
    model.members = dict(truth_members)
    snapshot_endpoints = list(drifted.items())
    snapshot_members = list(truth_members.items())
    live.begin_resync()
    feed = [("endpoint", item) for item in snapshot_endpoints] + \
        [("member", item) for item in snapshot_members]
    changes = list(during)
    while feed or changes:
        if feed and (not changes or data.draw(st.booleans(), label="feed next")):
            kind, (name, value) = feed.pop(0)
            if kind == "endpoint":
                live.resync_endpoint(name, value)
            else:
                live.resync_member(name, *value)
        else:
            apply(changes.pop(0), model, live, mirror)
    live.end_resync()
    settle(live, mirror)
    check(model, live, mirror)


def test_member_change_touches_only_that_owners_endpoints() -> None:
    live = IncrementalDesired[int](NODE, UNDERLAY)
    live.set_networks([NetworkSpec("a", 10)])
    for owner in range(2, 12):
        live.set_member(f"h{owner}", f"10.0.0.{owner}")
    for i in range(1000):
        owner = 2 + i % 10
        live.put_endpoint(i, EndpointEntry("a", f"h{owner}", f"02:00:00:00:{i // 256:02x}:"
                                           f"{i % 256:02x}", (f"10.1.{i // 256}.{i % 256}",)))
    live.step(10_000)
    live.take_changes()
    settled = live.statistics().settled
    live.set_member("h5", None)
    assert live.dirty == 100
    live.step(10_000)
    changes = live.take_changes()
    assert live.statistics().settled - settled == 100
    assert len(changes.fdb) == len(changes.neighbors) == 100
    assert changes.flood == {FloodKey("vxtun10", "10.0.0.5"): None}
    assert all(v is None for v in changes.fdb.values())


def test_a_members_key_rotation_moves_only_its_encrypted_entries_to_its_new_tunnel() -> None:
    """A rotation changes the member's tunnel address (its new slot): the FDB entries of its
    endpoints on encrypted networks follow, the flood entry moves, its plain networks' entries
    and every other member's stay untouched."""
    live = IncrementalDesired[int](NODE, UNDERLAY)
    live.set_networks([NetworkSpec("plain", 10), NetworkSpec("secret", 11, encrypted=True)])
    live.set_tunnel("100.64.0.1")
    live.set_member("h2", "10.0.0.2", "100.64.0.2")
    live.set_member("h3", "10.0.0.3", "100.64.0.3")
    entries = {i: EndpointEntry(network, owner, f"02:00:00:00:00:0{i}", (f"10.1.0.{i + 1}",))
               for i, (network, owner) in enumerate([("plain", "h2"), ("secret", "h2"),
                                                     ("secret", "h3")])}
    for key, entry in entries.items():
        live.put_endpoint(key, entry)
    live.step(100)
    live.take_changes()
    live.set_member("h2", "10.0.0.2", "100.96.0.2")
    assert live.dirty == 2  # h2's endpoints only
    live.step(100)
    changes = live.take_changes()
    assert changes.fdb == {FdbKey("vxtun11", "02:00:00:00:00:01"): "100.96.0.2"}
    assert changes.flood == {FloodKey("vxtun11", "100.96.0.2"): True,
                             FloodKey("vxtun11", "100.64.0.2"): None}
    # The neighbor entry is handed over again, unchanged (the claim is re-made on the new VTEP).
    assert changes.networks is None
    assert changes.neighbors == {NeighborKey("vxtun11", "10.1.0.2"): "02:00:00:00:00:01"}
    model = Model([NetworkSpec("plain", 10), NetworkSpec("secret", 11, encrypted=True)], [],
                  {"h2": ("10.0.0.2", "100.96.0.2"), "h3": ("10.0.0.3", "100.64.0.3")},
                  entries, "100.64.0.1")
    assert live.state() == model.full()
    # Our own rotation moves the tunnel route, not the devices: nothing to hand over.
    live.set_tunnel("100.96.0.1")
    live.step(100)
    assert len(live.take_changes()) == 0
