"""Netlink programming rate: the reconciler versus one iproute2 batch file, same run.

Usage: bench/netlink_rate.py [--entries N] [--json]

In a throw-away namespace (agent.lab.namespaces: unique prefix, deleted even on failure):
- through `overlay.reconciler.Reconciler` (pyroute2-encoded messages, batched sends, every
  acknowledgement read back and checked): add N FDB entries, add N neighbor entries, delete
  the N FDB entries, delete the N neighbor entries, each one `apply()` timed end to end
  (delta computation, encoding, kernel work, acknowledgements);
- the baseline: the same four steps with one `bridge -batch` / `ip -batch` file each, on a
  second vxlan device of the same namespace.
Both sides are checked against a kernel dump afterwards (counts of entries present).
For context it also times one pyroute2 `fdb("replace")` call per entry (min(N, 2000)
entries; key `fdb_add_per_s_pyroute2_per_call`).

Prints a table; with --json the last line is one JSON object with `entries`,
`fdb_add_per_s`, `fdb_add_per_s_iproute2`, `neigh_add_per_s`, `neigh_add_per_s_iproute2`,
the delete rates likewise, and `ratio_min` (the smallest reconciler/iproute2 ratio of the
four steps).

May import: the standard library, trio, overlay.*, underlay.*, agent.lab.namespaces.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from typing import Any

import trio

from agent.lab.namespaces import NetnsLab, run
from overlay.desired import (
    DesiredState,
    FdbKey,
    NeighborKey,
    NetworkSpec,
    UnderlayView,
    compute_desired,
)
from overlay.reconciler import Reconciler
from underlay.kernel import NetlinkThread
from underlay.netlink_ops import NetlinkKernel
from underlay.records import NTF_SELF, NUD_PERMANENT

VNI = 100
BASELINE_DEVICE = "benchvx101"


def entry_mac(i: int) -> str:
    return f"02:be:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def entry_ip(i: int) -> str:
    return f"10.{64 + ((i >> 16) & 63)}.{(i >> 8) & 255}.{i & 255}"


def entry_vtep(i: int) -> str:
    return f"10.0.{1 + (i % 200) // 250}.{2 + i % 200}"


def timed_batch(tool: str, ns: str, lines: list[str]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        batch.write("\n".join(lines) + "\n")
        batch.flush()
        started = time.perf_counter()
        subprocess.run([tool, "-n", ns, "-batch", batch.name], check=True,
                       capture_output=True, timeout=300)
        return time.perf_counter() - started


def count_lines(argv: list[str], ns: str, needle: str) -> int:
    return sum(needle in line for line in run(argv, netns=ns, timeout=120).stdout.splitlines())


async def reconciler_side(ns: str, n: int) -> dict[str, float]:
    nl = NetlinkThread(ns)
    try:
        reconciler = Reconciler(NetlinkKernel(nl))
        base = compute_desired([NetworkSpec("bench", VNI)], [], [], [],
                               UnderlayView("10.0.0.1", 1500), "bench-host")
        device = f"vxtun{VNI}"
        fdb = {FdbKey(device, entry_mac(i)): entry_vtep(i) for i in range(n)}
        neighbors = {NeighborKey(device, entry_ip(i)): entry_mac(i) for i in range(n)}
        reconciler.set_desired(base)
        if not await reconciler.apply():
            raise SystemExit(f"setup apply failed: {reconciler.statistics()}")
        steps = [
            ("fdb_add", DesiredState(base.networks, fdb=fdb)),
            ("neigh_add", DesiredState(base.networks, fdb=fdb, neighbors=neighbors)),
            ("fdb_del", DesiredState(base.networks, neighbors=neighbors)),
            ("neigh_del", DesiredState(base.networks)),
        ]
        seconds: dict[str, float] = {}
        for name, state in steps:
            before = reconciler.statistics().ops_by_result.get("ok", 0)
            reconciler.set_desired(state)
            started = time.perf_counter()
            in_sync = await reconciler.apply()
            seconds[name] = time.perf_counter() - started
            stats = reconciler.statistics()
            acknowledged = stats.ops_by_result.get("ok", 0) - before
            if not in_sync or acknowledged != n:
                raise SystemExit(f"{name}: in_sync={in_sync}, {acknowledged} of {n} "
                                 f"acknowledged: {stats}")
            if name == "neigh_add":
                present_fdb = count_lines(["bridge", "fdb", "show", "dev", device], ns,
                                          "self permanent")
                present_neigh = count_lines(["ip", "neigh", "show", "dev", device], ns,
                                            "PERMANENT")
                if (present_fdb, present_neigh) != (n, n):
                    raise SystemExit(f"kernel holds {present_fdb} FDB and {present_neigh} "
                                     f"neighbor entries, expected {n} each")
        return seconds
    finally:
        nl.close()


def pyroute2_per_call(ns: str, n: int) -> float:
    """Context: seconds for `n` FDB adds with one pyroute2 `fdb("replace")` call each."""
    run(["ip", "link", "add", "benchvx102", "type", "vxlan", "id", "102", "dstport", "4789",
         "local", "10.0.0.1", "nolearning"], netns=ns)
    nl = NetlinkThread(ns)
    try:
        index = nl.call_blocking(lambda ipr: ipr.link_lookup(ifname="benchvx102")[0])

        def add_all(ipr: Any) -> float:
            started = time.perf_counter()
            for i in range(n):
                ipr.fdb("replace", ifindex=index, lladdr=entry_mac(i),
                        dst=entry_vtep(i), state=NUD_PERMANENT, flags=NTF_SELF)
            return time.perf_counter() - started

        return nl.call_blocking(add_all)
    finally:
        nl.close()


def iproute2_side(ns: str, n: int) -> dict[str, float]:
    run(["ip", "link", "add", BASELINE_DEVICE, "type", "vxlan", "id", "101", "dstport", "4789",
         "local", "10.0.0.1", "nolearning", "proxy"], netns=ns)
    run(["ip", "link", "set", BASELINE_DEVICE, "up"], netns=ns)
    dev = BASELINE_DEVICE
    seconds = {
        "fdb_add": timed_batch("bridge", ns, [
            f"fdb replace {entry_mac(i)} dev {dev} dst {entry_vtep(i)} self permanent"
            for i in range(n)]),
        "neigh_add": timed_batch("ip", ns, [
            f"neigh replace {entry_ip(i)} lladdr {entry_mac(i)} dev {dev} nud permanent"
            for i in range(n)]),
    }
    present = (count_lines(["bridge", "fdb", "show", "dev", dev], ns, "self permanent"),
               count_lines(["ip", "neigh", "show", "dev", dev], ns, "PERMANENT"))
    if present != (n, n):
        raise SystemExit(f"iproute2 baseline: kernel holds {present}, expected {n} each")
    seconds["fdb_del"] = timed_batch("bridge", ns, [
        f"fdb del {entry_mac(i)} dev {dev} self" for i in range(n)])
    seconds["neigh_del"] = timed_batch("ip", ns, [
        f"neigh del {entry_ip(i)} dev {dev}" for i in range(n)])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000,
                        help="FDB and neighbor entries to add and delete (default 10000)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if not 1 <= args.entries <= 1_000_000:
        parser.error(f"--entries={args.entries}: must be between 1 and 1000000")
    n = args.entries
    lab = NetnsLab("nlr")
    try:
        ns = lab.ns("h")
        ours = trio.run(reconciler_side, ns, n)
        theirs = iproute2_side(ns, n)
        per_call_n = min(n, 2000)
        per_call = per_call_n / pyroute2_per_call(ns, per_call_n)
    finally:
        lab.close()
    steps = ["fdb_add", "neigh_add", "fdb_del", "neigh_del"]
    result: dict[str, float | int] = {"entries": n}
    ratios = []
    print(f"{'step':<10} {'reconciler/s':>14} {'iproute2 batch/s':>18} {'ratio':>7}")
    for step in steps:
        mine, base = n / ours[step], n / theirs[step]
        ratios.append(mine / base)
        print(f"{step:<10} {mine:>14,.0f} {base:>18,.0f} {mine / base:>7.2f}")
        result[f"{step}_per_s"] = round(mine)
        result[f"{step}_per_s_iproute2"] = round(base)
    result["ratio_min"] = round(min(ratios), 3)
    result["fdb_add_per_s_pyroute2_per_call"] = round(per_call)
    print(f"context: one pyroute2 fdb() call per entry: {per_call:,.0f}/s "
          f"({per_call_n} entries)")
    print(f"entries={n}; ratio_min={result['ratio_min']} (target >= 0.25)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
