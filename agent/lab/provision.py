"""Per-node agent configuration for provisioned machines (Vagrant) and the netns lab.

Owns: choosing the interface that carries a given underlay address (from `ip -j addr`
output, so the NAT interface every Vagrant VM shares is never picked by accident), and
rendering a validated `agent.toml` for one node.

Run on a machine: `python -m agent.lab.provision --name node1 --address 192.168.56.11
--etcd http://192.168.56.11:2379 --seed 192.168.56.11:7946 --output /etc/vxmesh/agent.toml`.

May import: agent.config, agent.state_files, agent.errors, the standard library.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, AgentConfigError, build_config, render_toml
from agent.state_files import write_atomically


def interface_for_address(addresses: Sequence[Mapping[str, Any]], address: str) -> str:
    """The name of the interface holding `address` in `ip -j addr` output (AgentConfigError if
    none)."""
    for link in addresses:
        for info in link.get("addr_info", []):
            if info.get("local") == address:
                return str(link["ifname"])
    held = sorted(f"{info.get('local')} ({link.get('ifname')})" for link in addresses
                  for info in link.get("addr_info", []))
    raise AgentConfigError(f"underlay.address: no interface holds {address!r} (addresses here: "
                      f"{', '.join(held) or 'none'})")


def node_config(*, name: str, address: str, interface: str, etcd: Sequence[str],
                seeds: Sequence[str], sections: Mapping[str, Mapping[str, Any]] | None = None
                ) -> AgentConfig:
    """A validated configuration for one node (extra `sections` override or add keys)."""
    data: dict[str, dict[str, Any]] = {
        "node": {"name": name},
        "underlay": {"interface": interface, "address": address},
        "gossip": {"seeds": [s for s in seeds]},
        "store": {"endpoints": list(etcd)},
    }
    for section, values in (sections or {}).items():
        data.setdefault(section, {}).update(values)
    return build_config(data, origin="generated config")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.lab.provision",
                                     description="write this node's /etc/vxmesh/agent.toml")
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True, help="underlay (private network) address")
    parser.add_argument("--etcd", action="append", required=True, help="etcd client URL")
    parser.add_argument("--seed", action="append", default=[], help="gossip seed host:port")
    parser.add_argument("--output", default="-", help="file to write, - for stdout")
    args = parser.parse_args(argv)
    try:
        shown = subprocess.run(["ip", "-j", "addr", "show"], check=True, capture_output=True,
                               text=True, timeout=10).stdout
        interface = interface_for_address(json.loads(shown), args.address)
        config = node_config(name=args.name, address=args.address, interface=interface,
                             etcd=args.etcd, seeds=args.seed)
    except AgentConfigError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 2
    text = render_toml(config)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_atomically(Path(args.output), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
