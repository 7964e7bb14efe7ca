"""Network configuration lists for vxmesh networks (what `vxmesh cni config|install` write).

Owns: the conflist of a vxmesh network (the `vxmesh` plugin first, Debian's `portmap` chained
after it for `-p HOST:CONTAINER`), its file name, and writing it atomically into a CNI
configuration directory.

Pure apart from `write_conflist`; standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFLIST_VERSION = "1.0.0"
DEFAULT_CONF_DIR = Path("/etc/cni/net.d")


def conflist(network: str, *, socket: str, subnet: str | None = None) -> dict[str, Any]:
    """The configuration list runtimes load for `network` (plugins run in this order)."""
    vxmesh: dict[str, Any] = {"type": "vxmesh", "network": network, "socket": socket,
                              "capabilities": {"ips": True, "mac": True}}
    if subnet is not None:
        vxmesh["subnet"] = subnet
    return {"cniVersion": CONFLIST_VERSION, "name": network,
            "plugins": [vxmesh, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def conflist_path(directory: Path, network: str) -> Path:
    """Where the conflist of `network` lives in `directory` (runtimes read *.conflist)."""
    return directory / f"{network}.conflist"


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def write_conflist(directory: Path, network: str, document: dict[str, Any]) -> Path:
    """Write `document` as `network`'s conflist in `directory` (created), atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = conflist_path(directory, network)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(render(document))
    os.replace(temporary, target)
    return target
