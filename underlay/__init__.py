"""The host side: underlay facts, the kernel adapter (the only user of pyroute2) and local
endpoint modes (none, host, bridge, macvlan, ipvlan).

Imports nothing from gossip/, overlay/ or agent/.

pyroute2's package `__init__` imports every family it supports (NDB with sqlite3, IPDB,
ipset, IPVS, nl80211, conntrack, plan9, ...): about 230 modules and 6 MB of resident memory
in an agent that uses IPRoute, the diag socket and netns. So the first import of `underlay`
registers the `pyroute2` package without running that `__init__` (its submodules import as
usual), and underlay's modules import each name from the submodule that defines it. If
`pyroute2` was imported before (a test importing it first), the full package stays in use.
"""

from __future__ import annotations

import importlib.util
import sys


def _register_pyroute2_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the importing module says so
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)


_register_pyroute2_package()
