"""bench/netns_bench.py's lab: neighbours pinned, so a big lab cannot overflow the kernel's
machine-wide ARP cache (a 40-host full mesh needs 1,560 dynamic entries; the cap is 1,024)."""

from __future__ import annotations

import subprocess

import pytest

from tests.bench.loading import bench_module
from underlay.netns_exec import ip_netns_exec


def _neighbours(netns: str, ifname: str) -> dict[str, str]:
    shown = subprocess.run(ip_netns_exec(netns, ["ip", "neigh", "show", "dev", ifname]),
                           capture_output=True, text=True, check=True, timeout=10).stdout
    return {row.split()[0]: row.split()[-1] for row in shown.splitlines() if row.strip()}


@pytest.mark.kernel
def test_every_host_has_permanent_entries_for_the_others_and_the_switch() -> None:
    netns_bench = bench_module("netns_bench")
    with netns_bench.BenchLab(3, "nb") as lab:
        lab.add_switch_address("10.77.255.254/16")
        addresses = {host.addr for host in lab.hosts}
        for host in lab.hosts:
            seen = _neighbours(host.netns, "eth0")
            assert set(seen) == addresses - {host.addr} | {"10.77.255.254"}
            assert set(seen.values()) == {"PERMANENT"}
        switch = _neighbours(lab.switch, "br0")
        assert set(switch) == addresses and set(switch.values()) == {"PERMANENT"}
        last = lab.hosts[-1]
        subprocess.run(ip_netns_exec(lab.hosts[0].netns, ["ping", "-c", "1", "-W", "2",
                                                          last.addr]),
                       check=True, capture_output=True, timeout=10)
