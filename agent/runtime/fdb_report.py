"""`vxmesh fdb`: what the kernel should hold against what it holds, entry by entry.

Owns: `fdb_report`, a pure function of the desired state and a kernel dump (links, FDB,
neighbors) to rows (network, kind, key, desired, kernel, state: ok/missing/extra/differs).

Rules: only our own objects count (VXLAN devices we recognise by name, permanent entries);
flood entries are keyed by their destination. No I/O: the caller dumps the kernel.

May import: overlay.desired, underlay.records, the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from overlay import desired as desired_state
from underlay.records import NUD_PERMANENT, ZERO_MAC, FdbRecord, LinkRecord, NeighborRecord


def _ours(device: str, state: int) -> bool:
    return device.startswith("vxtun") and desired_state.owned_device(device) is not None \
        and bool(state & NUD_PERMANENT)


def _state(desired: str | None, kernel: str | None) -> str:
    if desired == kernel:
        return "ok"
    if kernel is None:
        return "missing"
    return "extra" if desired is None else "differs"


def fdb_report(want: desired_state.DesiredState, links: Sequence[LinkRecord],
               fdb: Sequence[FdbRecord], neighbors: Sequence[NeighborRecord],
               network: str | None = None) -> dict[str, Any]:
    """Rows of desired against kernel entries (of `network` only, if given)."""
    by_index = {link.index: link.name for link in links}
    device_network = {d.vxlan: d.network for d in want.networks.values()}
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row(device: str, kind: str, key: str) -> dict[str, Any]:
        return rows.setdefault((device, kind, key), {
            "network": device_network.get(device, device), "kind": kind, "key": key,
            "value": None, "desired": None, "kernel": None})

    for fkey, vtep in want.fdb.items():
        row(fkey.device, "fdb", fkey.mac)["desired"] = vtep
    for flood in want.flood:
        row(flood.device, "flood", flood.dst)["desired"] = ZERO_MAC
    for nkey, mac in want.neighbors.items():
        row(nkey.device, "neigh", nkey.ip)["desired"] = mac
    for record in fdb:
        device = by_index.get(record.ifindex, "")
        if not _ours(device, record.state):
            continue
        if record.mac == ZERO_MAC:
            row(device, "flood", record.dst or "-")["kernel"] = record.mac
        elif record.dst is not None:
            row(device, "fdb", record.mac)["kernel"] = record.dst
    for neighbor in neighbors:
        device = by_index.get(neighbor.ifindex, "")
        if _ours(device, neighbor.state):
            row(device, "neigh", neighbor.ip)["kernel"] = neighbor.mac
    out = []
    for item in sorted(rows.values(), key=lambda r: (r["network"], r["kind"], r["key"])):
        if network is not None and item["network"] != network:
            continue
        item["value"] = item["desired"] or item["kernel"]
        item["state"] = _state(item["desired"], item["kernel"])
        out.append(item)
    return {"entries": out, "in_sync": all(r["state"] == "ok" for r in out),
            "problems": list(want.problems)}
