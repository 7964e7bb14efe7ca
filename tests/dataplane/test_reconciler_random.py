"""Randomised: whatever sequence of desired states, hand edits and transient failures, once
failures stop the reconciler converges to exactly the desired entries, and never touches a
foreign object on the way."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable

import pytest
import trio

from overlay.desired import (
    AliveMember,
    DesiredState,
    EndpointEntry,
    IncrementalDesired,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)
from overlay.reconciler import Reconciler
from tests.dataplane.fake_kernel import FakeKernel, Injection
from underlay.records import NTF_SELF, NUD_NOARP, NUD_PERMANENT, ZERO_MAC, Write

UNDERLAY = UnderlayView("10.0.0.1", 1500)
CODES = [errno.EBUSY, errno.ENOENT, errno.EEXIST, errno.ENOBUFS, errno.EINVAL]


def sometimes(rng: random.Random, p: float) -> Callable[[Write], bool]:
    """A write predicate that holds with probability `p` (seeded)."""
    return lambda _write: rng.random() < p


Inputs = tuple[list[NetworkSpec], list[AliveMember], list[EndpointEntry]]


def random_inputs(rng: random.Random) -> Inputs:
    networks = [NetworkSpec(f"n{v}", v) for v in rng.sample([10, 11, 12], rng.randint(0, 3))]
    members = [AliveMember(f"h{i}", f"10.0.0.{i}") for i in range(1, 6) if rng.random() < 0.8]
    endpoints = [
        EndpointEntry(f"n{rng.choice([10, 11, 12])}", f"h{rng.randint(1, 5)}",
                      f"02:00:00:00:{i:02x}:{rng.randint(0, 3):02x}",
                      (f"10.1.{i}.{rng.randint(1, 3)}",) + ((f"fd10::{i}",)
                                                          if rng.random() < 0.5 else ()))
        for i in range(rng.randint(0, 12))
    ]
    return networks, members, endpoints


def desired_of(inputs: Inputs) -> DesiredState:
    networks, members, endpoints = inputs
    return compute_desired(networks, members, endpoints, [], UNDERLAY, "h1")


class ChangesHandover:
    """Hands desired state over the way the agent's pipeline does: the changes an
    IncrementalDesired fed with the same inputs produces (`Reconciler.update_desired`)."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.live: IncrementalDesired[int] = IncrementalDesired("h1", UNDERLAY)
        self.keys = 0

    def __call__(self, inputs: Inputs) -> None:
        networks, members, endpoints = inputs
        self.live.set_networks(networks)
        alive = {m.name: m.vtep for m in members}
        for i in range(1, 6):
            self.live.set_member(f"h{i}", alive.get(f"h{i}"))
        for key, entry in enumerate(endpoints):
            self.live.put_endpoint(key, entry)
        for key in range(len(endpoints), self.keys):
            self.live.remove_endpoint(key)
        self.keys = len(endpoints)
        while self.live.step(5):
            self.reconciler.update_desired(self.live.take_changes())
        self.reconciler.update_desired(self.live.take_changes())


def kernel_entries(kernel: FakeKernel) -> tuple[set[tuple[str, str, str | None]],
                                                set[tuple[str, str, str | None]]]:
    names = {i: link.name for i, link in kernel.links.items()}
    fdb = {(names[i], mac, dst) for (i, mac, dst), (state, _f) in kernel.fdb.items()
           if state & NUD_PERMANENT and names[i].startswith("vxtun")}
    neigh = {(names[i], ip, mac) for (i, ip), (mac, state, _f) in kernel.neighbors.items()
             if state & NUD_PERMANENT and names[i].startswith("vxtun")}
    return fdb, neigh


def expected(state: DesiredState) -> tuple[set[tuple[str, str, str | None]],
                                           set[tuple[str, str, str | None]]]:
    fdb: set[tuple[str, str, str | None]] = {(k.device, k.mac, v) for k, v in state.fdb.items()}
    fdb |= {(k.device, ZERO_MAC, k.dst) for k in state.flood}
    neigh: set[tuple[str, str, str | None]] = {
        (k.device, k.ip, v) for k, v in state.neighbors.items()}
    return fdb, neigh


@pytest.mark.parametrize("handover", ["whole", "changes"])
@pytest.mark.parametrize("seed", range(25))
async def test_converges_after_chaos(seed: int, handover: str) -> None:
    rng = random.Random(seed)
    kernel = FakeKernel()
    foreign = kernel.add_link("vxlan0", "vxlan")
    kernel.fdb[(foreign, "02:aa:00:00:00:01", "10.0.0.9")] = (NUD_PERMANENT, NTF_SELF)
    reconciler = Reconciler(kernel)
    hand_over: Callable[[Inputs], None] = (
        (lambda inputs: reconciler.set_desired(desired_of(inputs))) if handover == "whole"
        else ChangesHandover(reconciler))
    inputs = random_inputs(rng)
    strays: list[tuple[int, str, str | None]] = []
    for _step in range(rng.randint(3, 10)):
        if rng.random() < 0.6:
            inputs = random_inputs(rng)
        hand_over(inputs)
        kernel.injections = [
            Injection(sometimes(random.Random(rng.random()), rng.random() / 3),
                      rng.choice(CODES), times=rng.randint(1, 5))
            for _ in range(rng.randint(0, 2))]
        kernel.interrupted_dumps = rng.choice([0, 0, 0, 1])
        ours_fdb = sorted((k for k in kernel.fdb if k[0] != foreign), key=str)
        if rng.random() < 0.3 and ours_fdb:  # a hand edit
            del kernel.fdb[rng.choice(ours_fdb)]
        if rng.random() < 0.3:
            ours = [i for i, link in kernel.links.items() if link.name.startswith("vxtun")]
            if ours:  # a stray static entry on our device: not ours, must survive
                strays.append((rng.choice(ours), "02:bb:00:00:00:01", "10.0.0.8"))
                kernel.fdb[strays[-1]] = (NUD_NOARP, NTF_SELF)
        if rng.random() < 0.3:
            reconciler.request_resync()
        await reconciler.apply()
        await trio.lowlevel.checkpoint()
    kernel.injections = []
    kernel.interrupted_dumps = 0
    reconciler.request_resync()
    for _ in range(3):
        if await reconciler.apply():
            break
    assert reconciler.in_sync(), reconciler.statistics()
    state = desired_of(inputs)
    assert kernel_entries(kernel) == expected(state)
    assert {link.name for link in kernel.links.values() if link.name.startswith("vxtun")} == \
        set(state.networks)
    assert kernel.fdb[(foreign, "02:aa:00:00:00:01", "10.0.0.9")] == (NUD_PERMANENT, NTF_SELF)
    # A stray entry lives exactly as long as its device.
    assert all((k in kernel.fdb) == (k[0] in kernel.links) for k in strays)
