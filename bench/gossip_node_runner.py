"""One vxmesh gossip node for the gossip benchmark: the agent's own gossip stack, no kernel.

Usage (run by bench/gossip_vs_serf.py inside a lab namespace):
    gossip_node_runner.py --name h3 --bind 10.77.0.3:7946 --state-dir DIR
                          [--join 10.77.0.1:7946]

Runs `agent.runtime.gossip_link.GossipLink` (the `gossip.node.GossipNode` trio driver with the LAN
preset, carrying the agent's `overlay.table.NeighborTable` through its delegate), exactly as
`vxmesh agent` composes it, minus etcd and the data plane. Prints one line per event, flushed:
  `event joined NAME` (member joined or recovered, ourselves once at start),
  `event failed NAME` (member declared failed),
  `event update IP` (an endpoint record for IP became visible in our table).
Reads commands on stdin: `update IP` publishes an endpoint (network `bench`) with that IP from
this node. No encryption (the serf side runs without -encrypt too).

May import: agent.runtime.gossip_link, agent.lab.provision, overlay.table, gossip.swim, trio,
stdlib.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import trio

from agent.config import parse_hostport
from agent.lab.provision import node_config
from agent.runtime.gossip_link import GossipLink
from gossip.swim import MemberFailed, MemberJoined, MemberRecovered
from overlay.table import EndpointChanged, NeighborTable, TableEvent
from underlay.endpoints_model import mac_for_address

NETWORK = "bench"


def say(line: str) -> None:
    print(line, flush=True)


def on_table_change(event: TableEvent) -> None:
    if isinstance(event, EndpointChanged) and event.current is not None:
        say(f"event update {event.ip}")


async def run_runner(name: str, bind: tuple[str, int], seed: tuple[str, int] | None,
                     state_dir: str) -> None:
    config = node_config(name=name, address=bind[0], interface="eth0", etcd=[],
                         seeds=[f"{seed[0]}:{seed[1]}"] if seed else [],
                         sections={"node": {"state_dir": state_dir},
                                   "gossip": {"profile": "lan", "port": bind[1],
                                              "encrypt": False}})
    table = NeighborTable(name, bind[0])
    table.join_network(NETWORK, trio.current_time())
    link = GossipLink(config, name, bind[0], table, on_change=on_table_change)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        subscription = link.gossip.subscribe(capacity=4096)
        say(f"event joined {name}")

        async def print_membership() -> None:
            async for event in subscription:
                if event.member.name == name:
                    continue
                if isinstance(event, MemberJoined | MemberRecovered):
                    say(f"event joined {event.member.name}")
                elif isinstance(event, MemberFailed):
                    say(f"event failed {event.member.name}")

        nursery.start_soon(print_membership)

        async def stop_on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_sigterm)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line:  # the bench closed our stdin: it is stopping us
                nursery.cancel_scope.cancel()
                return
            command, _, argument = line.strip().partition(" ")
            if command == "update":
                table.put_endpoint(NETWORK, argument, mac_for_address(argument),
                                   trio.current_time())
                link.records_changed()
            else:
                say(f"error unknown command {line.strip()!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", required=True, help="address:port to gossip on")
    parser.add_argument("--join", default=None, help="seed address:port")
    parser.add_argument("--state-dir", required=True,
                        help="the agent's state directory (the bench creates and removes it)")
    args = parser.parse_args(argv)
    bind = parse_hostport(args.bind, key="--bind")
    seed = parse_hostport(args.join, key="--join") if args.join else None
    trio.run(run_runner, args.name, bind, seed, args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
