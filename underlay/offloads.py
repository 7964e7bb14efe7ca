"""Offload features of the underlay interface (what `ethtool -k` lists), and what the overlay
loses without them.

Owns `read_features` (a device's features by kernel name, `tx-udp_tnl-segmentation`, ...,
through pyroute2's ethtool ioctl ETHTOOL_GFEATURES) and `tunnel_offload_advice`, the pure
check the agent runs at start on its underlay interface.

What bench/dataplane.py measured (bench/RESULTS.md, "dataplane"), each setting switched in
the same run against the kernel's defaults: UDP tunnel segmentation offload on the underlay
device is the one setting that decides VXLAN throughput (off: the encapsulated TCP is
segmented in software before the underlay, about 0.5x). GRO on the endpoint veths, on the
vxlan device and on the underlay, fraglist GRO, UDP GRO forwarding and the outer UDP
checksum moved nothing beyond the noise of the shared machine, so the agent leaves them at
the kernel's defaults (the checksum is `[dataplane] vxlan_udp_csum`). The underlay interface
is the host's, not ours: the agent reports a missing offload and never changes it.

Rules:
- `read_features` runs on the namespace's `NetlinkThread` (`nl.call_blocking(lambda _ipr:
  ...)`): the ioctl socket is opened by the calling thread, so it lives in that thread's
  network namespace. A failure raises KernelError naming the device.

May import: pyroute2, the standard library, underlay.*.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyroute2.ethtool.ioctl import IoctlEthtool

from underlay.errors import KernelError

TUNNEL_SEGMENTATION = "tx-udp_tnl-segmentation"
TUNNEL_CSUM_SEGMENTATION = "tx-udp_tnl-csum-segmentation"


def read_features(ifname: str) -> dict[str, bool]:
    """Every feature of `ifname` by kernel name -> active."""
    ethtool = IoctlEthtool()
    try:
        ethtool.change_ifname(ifname)
        features = ethtool.get_features()
        # iterating the list yields (name, active, available, block, bit)
        return {name: bool(active) for name, active, *_ in features if name}
    except OSError as exc:
        raise KernelError(f"cannot read the features of {ifname!r}: {exc}", exc.errno) from exc
    finally:
        ethtool.close()


def tunnel_offload_advice(ifname: str, features: Mapping[str, bool],
                          udp_csum: bool) -> str | None:
    """One line for the operator when `ifname` cannot segment the VXLAN packets the agent's
    devices send (with outer checksums when `udp_csum`), else None."""
    needed = TUNNEL_CSUM_SEGMENTATION if udp_csum else TUNNEL_SEGMENTATION
    if features.get(needed, False):
        return None
    return (f"underlay {ifname}: {needed} is off, so VXLAN packets are segmented in software "
            "(bench/dataplane.py measured about half the throughput); turn it on with "
            f"`ethtool -K {ifname} {needed} on` if the NIC offers it")
