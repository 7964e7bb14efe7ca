"""The `vxmesh` command line: talks to the agent's control API, runs the agent and the lab.

Owns: argument parsing, the HTTP client over the unix socket (agent.api.client), human
tables and `--json` output, exit codes.

Exit codes: 0 success; 1 the agent refused or failed the request; 2 bad usage or a bad value
(the message names it); 3 the agent cannot be reached; 4 not found; 5 conflict; 6 a
dependency (etcd) is unavailable; 130 interrupted.

The socket is `--socket`, else `$VXMESH_API_SOCKET` (the same variable configures the agent),
else `/run/vxmesh/agent.sock`.

May import: everything in agent/ (it is the top of the composition root), the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.api.client import DEFAULT_SOCKET, ApiClient, CliError
from agent.api.errors import EXIT_CONFLICT, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from agent.config import AgentConfigError
from agent.errors import AgentError
from agent.terminal import Progress, render_cell, render_table
from underlay.endpoints_model import NETWORK_MODES, Mode
from underlay.netns_exec import ip_netns_exec
from underlay.policy_table import LOG_GROUP, LOG_RATE
from underlay.records import VNI_MAX, VNI_MIN

# -- output -----------------------------------------------------------------------------------

def _emit(args: argparse.Namespace, value: Any, columns: Sequence[str] | None = None) -> None:
    if args.json:
        print(json.dumps(value, indent=2, sort_keys=True))
    elif columns is not None and isinstance(value, list):
        print(render_table(value, columns) if value else "(none)")
    elif isinstance(value, dict):
        width = max((len(k) for k in value), default=0)
        for key, item in value.items():
            print(f"{key.ljust(width)}  {render_cell(item) if not isinstance(item, dict) else ''}")
            if isinstance(item, dict):
                for sub, subval in item.items():
                    print(f"  {sub.ljust(width)}  {render_cell(subval)}")
    else:
        print(render_cell(value))


# -- commands ---------------------------------------------------------------------------------

def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.socket or os.environ.get("VXMESH_API_SOCKET") or DEFAULT_SOCKET)


def cmd_status(args: argparse.Namespace) -> int:
    _emit(args, _client(args).request("GET", "/v1/status"))
    return EXIT_OK


def cmd_members(args: argparse.Namespace) -> int:
    _emit(args, _client(args).request("GET", "/v1/members"),
          ["name", "address", "state", "host", "incarnation", "vtep"])
    return EXIT_OK


def cmd_leave(args: argparse.Namespace) -> int:
    _emit(args, _client(args).request("POST", "/v1/leave"))
    return EXIT_OK


def cmd_networks(args: argparse.Namespace) -> int:
    _emit(args, _client(args).request("GET", "/v1/networks"),
          ["name", "driver", "subnets", "gateway", "mtu", "vni", "endpoints"])
    return EXIT_OK


def cmd_endpoints(args: argparse.Namespace) -> int:
    _emit(args, _client(args).request("GET", "/v1/endpoints"),
          ["name", "network", "mode", "ip", "mac", "node", "vtep", "local"])
    return EXIT_OK


def cmd_network(args: argparse.Namespace) -> int:
    client = _client(args)
    progress = Progress(quiet=args.json)
    if args.action == "create":
        options = {}
        for text in args.opt or ():
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise CliError(f"--opt {text!r}: expected KEY=VALUE", EXIT_USAGE)
            options[key] = value
        body = {"name": args.name, "subnet": args.subnet, "vni": args.vni, "mtu": args.mtu,
                "driver": args.driver, "subnet6": args.subnet6, "gateway": args.gateway,
                "ip_range": args.ip_range, "parent": args.parent,
                "ipvlan_mode": args.ipvlan_mode, "internal": args.internal or None,
                "options": options or None}
        with progress.step(f"creating network {args.name}"):
            result = client.request("POST", "/v1/networks",
                                    {k: v for k, v in body.items() if v is not None})
        _emit(args, result)
    else:
        with progress.step(f"deleting network {args.name}"):
            result = client.request("DELETE", f"/v1/networks/{args.name}")
        if args.json:
            _emit(args, result)
    return EXIT_OK


def _labels(given: list[str] | None) -> dict[str, str] | None:
    """`--label K=V` options as the API's labels object (None when none is given)."""
    if not given:
        return None
    labels: dict[str, str] = {}
    for text in given:
        key, equals, value = text.partition("=")
        if not equals:
            raise CliError(f"--label {text!r}: must be KEY=VALUE", EXIT_USAGE)
        labels[key] = value
    return labels


def cmd_policies(args: argparse.Namespace) -> int:
    _emit(args, _client(args).request("GET", "/v1/policies"),
          ["name", "network", "direction", "select", "allow", "ports", "log", "dropped"])
    return EXIT_OK


def cmd_policy(args: argparse.Namespace) -> int:
    client = _client(args)
    progress = Progress(quiet=args.json)
    if args.action == "list":
        return cmd_policies(args)
    if args.action == "create":
        body = {"name": args.name, "network": args.network, "select": args.select,
                "allow": args.allow_from, "ports": args.port or [],
                "direction": "egress" if args.egress else "ingress", "log": args.log}
        with progress.step(f"creating policy {args.name}"):
            result = client.request("POST", "/v1/policies", body)
        _emit(args, result)
        return EXIT_OK
    with progress.step(f"deleting policy {args.name}"):
        result = client.request("DELETE", f"/v1/policies/{args.name}")
    if args.json:
        _emit(args, result)
    return EXIT_OK


def cmd_endpoint(args: argparse.Namespace) -> int:
    client = _client(args)
    progress = Progress(quiet=args.json)
    if args.action == "create":
        body: dict[str, Any] = {"name": args.name, "network": args.network, "mode": args.mode,
                                "ip": args.ip, "ip6": args.ip6, "publish": args.publish or None,
                                "ports": args.port or None, "aliases": args.alias or None,
                                "services": args.service or None,
                                "labels": _labels(args.label)}
        with progress.step(f"creating endpoint {args.name}"):
            result = client.request("POST", "/v1/endpoints",
                                    {k: v for k, v in body.items() if v is not None})
        _emit(args, result)
        return EXIT_OK
    if args.action == "delete":
        with progress.step(f"deleting endpoint {args.name}"):
            result = client.request("DELETE", f"/v1/endpoints/{args.name}")
        if args.json:
            _emit(args, result)
        return EXIT_OK
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("endpoint exec: give a command after --, e.g. "
                       "`vxmesh endpoint exec web -- ip addr`", EXIT_USAGE)
    record = client.request("GET", f"/v1/endpoints/{args.name}")
    netns = record.get("netns")
    argv = ip_netns_exec(netns, command) if netns else command
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise CliError(f"cannot run {argv[0]!r}: {exc.strerror}", EXIT_FAILED) from None


def cmd_keys(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "list":
        result = client.request("GET", "/v1/keys")
        if args.json:
            _emit(args, result)
        else:
            for key in result["keys"]:
                print(f"{key}{'  (primary)' if key == result['primary'] else ''}")
        return EXIT_OK
    if args.action == "rotate-wireguard":
        with Progress(quiet=args.json).step("WireGuard key rotation (old and new overlap)"):
            result = ApiClient(client.socket_path, timeout=90.0).request(
                "POST", "/v1/wireguard/rotate", {})
        if args.json:
            _emit(args, result)
        else:
            print(f"new public key {result['public_key']} (was {result['previous']}) on "
                  f"{result['interface']}, port {result['port']}; the old interface is "
                  "removed once its traffic has drained")
        return EXIT_OK
    if args.action == "generate":
        import base64

        print(base64.b64encode(os.urandom(32)).decode())
        return EXIT_OK
    if not args.key:
        raise CliError(f"keys {args.action}: give the base64 key", EXIT_USAGE)
    with Progress(quiet=args.json).step(f"keys {args.action}"):
        result = client.request("POST", f"/v1/keys/{args.action}", {"key": args.key})
    if args.json:
        _emit(args, result)
    return EXIT_OK


def cmd_fdb(args: argparse.Namespace) -> int:
    path = "/v1/fdb" + (f"?network={args.network}" if args.network else "")
    result = _client(args).request("GET", path)
    if args.json:
        _emit(args, result)
        return EXIT_OK
    print(render_table(result["entries"], ["network", "kind", "key", "value", "desired",
                                           "kernel", "state"]) if result["entries"]
          else "(no entries)")
    print(f"\nin sync: {render_cell(result.get('in_sync'))}")
    return EXIT_OK


def cmd_ports(args: argparse.Namespace) -> int:
    path = "/v1/ports" + (f"?port={quote(args.port)}" if args.port else "")
    rows = _client(args).request("GET", path)
    if args.json:
        _emit(args, rows)
        return EXIT_OK
    print(render_table(rows, ["proto", "address", "port", "pid", "program", "container"])
          if rows else "(no listening socket" + (f" on {args.port})" if args.port else ")"))
    return EXIT_OK


def cmd_cni(args: argparse.Namespace) -> int:
    """`cni config NETWORK` prints the network's conflist; `cni install` writes it. The network
    is created in the agent first when it does not know it (with --subnet)."""
    from agent.cni.conflist import DEFAULT_CONF_DIR, conflist, render, write_conflist

    client = _client(args)
    networks = {n["name"]: n for n in client.request("GET", "/v1/networks")}
    network = networks.get(args.network)
    if network is None:
        if not args.subnet:
            raise CliError(f"network {args.network!r}: the agent does not know it; give "
                           "--subnet CIDR to create it", EXIT_NOT_FOUND)
        with Progress(quiet=args.json or args.action == "config").step(
                f"creating network {args.network} ({args.subnet})"):
            network = client.request("POST", "/v1/networks",
                                     {"name": args.network, "subnet": args.subnet})
    elif args.subnet and args.subnet != network["subnet"]:
        raise CliError(f"--subnet {args.subnet}: network {args.network!r} exists with subnet "
                       f"{network['subnet']}", EXIT_CONFLICT)
    document = conflist(args.network, socket=client.socket_path, subnet=network["subnet"])
    if args.action == "config":
        print(render(document), end="")
        return EXIT_OK
    directory = Path(args.dir or os.environ.get("VXMESH_CNI_CONF_DIR") or DEFAULT_CONF_DIR)
    path = write_conflist(directory, args.network, document)
    if args.json:
        _emit(args, {"network": args.network, "path": str(path), "conflist": document})
    else:
        print(f"wrote {path}: `podman run --network {args.network} ...` (CNI backend) uses it")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    # pyroute2 forks small helpers to enter namespaces; gRPC's fork handlers (etcd client
    # threads) can hang such a child, so they are turned off, and their log line with them.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from agent.config import load_config
    from agent.runtime.process import run_agent_process

    assignments = list(args.set or [])
    if args.log_level:
        assignments.append(f"node.log_level={args.log_level}")
    config = load_config(Path(args.config) if args.config else None, assignments=assignments)
    return run_agent_process(config, config_path=Path(args.config) if args.config else None,
                             assignments=assignments)


def cmd_lab(args: argparse.Namespace) -> int:
    if args.action == "vm":
        return cmd_lab_vm(args)
    from agent.lab.hosts import run_lab_command

    return run_lab_command(args)


def cmd_lab_vm(args: argparse.Namespace) -> int:
    """The VM tier (agent.lab.vm_cluster.run_tier): its table, or its figures with --json;
    exit 1 when a check failed (each named on stderr)."""
    if not 1 <= args.nodes <= 3:
        raise CliError(f"--nodes {args.nodes}: must be 1, 2 or 3 (TCG VMs on this machine)",
                       EXIT_USAGE)
    if args.count < 10:
        raise CliError(f"--count {args.count}: must be at least 10", EXIT_USAGE)
    if os.geteuid() != 0:
        raise CliError("lab vm makes a network namespace, taps and VMs: run it as root",
                       EXIT_USAGE)
    from agent.lab import vm_cluster

    result = vm_cluster.run_tier(args.nodes, args.count, args.prefix or "vxvm",
                                 directory=Path(args.dir) if args.dir else None,
                                 progress=Progress(quiet=args.json))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(vm_cluster.tier_table(result))
    failures = vm_cluster.tier_failures(result)
    for failure in failures:
        print(f"vxmesh lab vm: {failure}", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK


# -- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"control socket (default $VXMESH_API_SOCKET or {DEFAULT_SOCKET})")
    parser = argparse.ArgumentParser(
        prog="vxmesh", parents=[common],
        description="vxmesh: multi-host container networking (SWIM gossip, etcd, VXLAN).",
        epilog="exit codes: 0 ok, 1 failed, 2 usage/bad value, 3 agent unreachable, "
               "4 not found, 5 conflict, 6 etcd unavailable")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("status", parents=[common], help="this node's state").set_defaults(
        func=cmd_status)
    sub.add_parser("members", parents=[common], help="gossip members").set_defaults(
        func=cmd_members)
    sub.add_parser("leave", parents=[common],
                   help="leave the cluster (peers withdraw this node's entries at once) and "
                        "stop the agent; a plain stop keeps them while this host forwards"
                   ).set_defaults(func=cmd_leave)
    sub.add_parser("networks", parents=[common], help="networks").set_defaults(
        func=cmd_networks)
    sub.add_parser("endpoints", parents=[common], help="endpoints of every host").set_defaults(
        func=cmd_endpoints)

    network = sub.add_parser("network", parents=[common], help="create or delete a network")
    net_sub = network.add_subparsers(dest="action", required=True)
    create = net_sub.add_parser("create", parents=[common])
    create.add_argument("name")
    create.add_argument("--subnet", help="CIDR, e.g. 10.10.0.0/16 (needed: it is not chosen "
                        "for you)")
    create.add_argument("--vni", type=int,
                        help=f"VXLAN network id {VNI_MIN}-{VNI_MAX} (default: next)")
    create.add_argument("--mtu", type=int, help="endpoint MTU (default: overlay: underlay MTU "
                        "- 50, - 70 on an IPv6 underlay; with --opt encrypted=true - 110, "
                        "- 130; others: the underlay MTU)")
    create.add_argument("--driver", default="overlay",
                        choices=[mode.value for mode in NETWORK_MODES],
                        help="overlay (every host, VXLAN), bridge (this host), macvlan or "
                             "ipvlan (on the parent interface's segment)")
    create.add_argument("--subnet6", help="an IPv6 subnet besides the IPv4 one")
    create.add_argument("--gateway", help="gateway address (default: the subnet's first)")
    create.add_argument("--ip-range", help="hand out automatic addresses from this CIDR only")
    create.add_argument("--parent", metavar="IFACE[.VLAN]",
                        help="macvlan/ipvlan host interface; IFACE.VLAN makes the 802.1Q "
                             "sub-interface (default: the underlay interface)")
    create.add_argument("--ipvlan-mode", choices=("l2", "l3"))
    create.add_argument("--internal", action="store_true",
                        help="no egress NAT: endpoints reach only their network")
    create.add_argument("--opt", action="append", metavar="K=V",
                        help="driver option, e.g. encrypted=true (overlay: VXLAN inside "
                             "WireGuard)")
    net_sub.add_parser("delete", parents=[common]).add_argument("name")
    network.set_defaults(func=cmd_network)

    policy = sub.add_parser("policy", parents=[common],
                            help="network policy between endpoints: create, list, delete")
    pol_sub = policy.add_subparsers(dest="action", required=True)
    pol_create = pol_sub.add_parser("create", parents=[common])
    pol_create.add_argument("name")
    pol_create.add_argument("--network", required=True, help="the network it applies in")
    pol_create.add_argument("--select", required=True, metavar="LABEL=V",
                            help="the endpoints it selects")
    pol_create.add_argument("--allow-from", action="append", required=True,
                            metavar="LABEL=V|CIDR",
                            help="peers allowed (repeatable; with --egress: destinations)")
    pol_create.add_argument("--port", action="append", metavar="P/PROTO",
                            help="only to these ports (repeatable; default: every port)")
    pol_create.add_argument("--egress", action="store_true",
                            help="restrict what the selected endpoints send (default: what "
                                 "they receive)")
    pol_create.add_argument("--log", action="store_true",
                            help=f"log denied packets too (at most {LOG_RATE} per policy, to "
                                 f"nflog group {LOG_GROUP}: tcpdump -i nflog:{LOG_GROUP})")
    pol_sub.add_parser("list", parents=[common])
    pol_sub.add_parser("delete", parents=[common]).add_argument("name")
    policy.set_defaults(func=cmd_policy)

    endpoint = sub.add_parser("endpoint", parents=[common], help="create, delete, exec")
    ep_sub = endpoint.add_subparsers(dest="action", required=True)
    ep_create = ep_sub.add_parser("create", parents=[common])
    ep_create.add_argument("name")
    ep_create.add_argument("--network", help="network name (its driver decides the mode)")
    ep_create.add_argument("--mode", choices=[mode.value for mode in Mode],
                           help="host or none; with --network the network's driver decides "
                                "(a mode given must match it); bridge, macvlan or ipvlan "
                                "without --network join the default network of that name "
                                "(made on first use; macvlan/ipvlan need --ip)")
    ep_create.add_argument("--ip", help="address (default: next free in the network)")
    ep_create.add_argument("--ip6", help="IPv6 address on a network with --subnet6 (default: "
                           "the lowest free one)")
    ep_create.add_argument("--publish", action="append", metavar="H:P/PROTO",
                           help="publish container port P on host port H (bridge mode)")
    ep_create.add_argument("--port", action="append", metavar="P/PROTO",
                           help="host port the workload binds (host mode)")
    ep_create.add_argument("--alias", action="append", metavar="NAME",
                           help="another DNS name of the endpoint (repeatable; several "
                                "endpoints may share one: answers are shuffled)")
    ep_create.add_argument("--service", action="append", metavar="P/PROTO",
                           help="a port it serves, published as SRV _P._PROTO.NAME "
                                "(repeatable)")
    ep_create.add_argument("--label", action="append", metavar="K=V",
                           help="a label network policies select by (repeatable)")
    ep_sub.add_parser("delete", parents=[common]).add_argument("name")
    ep_exec = ep_sub.add_parser("exec", parents=[common], help="run a command in the endpoint")
    ep_exec.add_argument("name")
    ep_exec.add_argument("command", nargs=argparse.REMAINDER)
    endpoint.set_defaults(func=cmd_endpoint)

    keys = sub.add_parser("keys", parents=[common],
                          help="gossip encryption keyring; rotate-wireguard: a new WireGuard "
                               "key pair without a dropped packet")
    keys.add_argument("action", choices=["list", "install", "use", "remove", "generate",
                                         "rotate-wireguard"])
    keys.add_argument("key", nargs="?", help="base64 AES key (16, 24 or 32 bytes)")
    keys.set_defaults(func=cmd_keys)

    ports = sub.add_parser("ports", parents=[common],
                           help="listening ports with their process and Docker container")
    ports.add_argument("port", nargs="?", help="only this PORT/PROTO (80/tcp, 10.0.0.1:53/udp)")
    ports.set_defaults(func=cmd_ports)

    fdb = sub.add_parser("fdb", parents=[common], help="desired vs kernel FDB/neighbor entries")
    fdb.add_argument("--network")
    fdb.set_defaults(func=cmd_fdb)

    cni = sub.add_parser("cni", parents=[common],
                         help="CNI network configurations (Podman, containerd, Kubernetes)")
    cni_sub = cni.add_subparsers(dest="action", required=True)
    for action, text in (("config", "print the conflist of a network"),
                         ("install", "write it into the CNI configuration directory")):
        cni_action = cni_sub.add_parser(action, parents=[common], help=text)
        cni_action.add_argument("network")
        cni_action.add_argument("--subnet", help="create the network with this subnet if the "
                                                 "agent does not know it")
        if action == "install":
            cni_action.add_argument("--dir", help="CNI configuration directory (default "
                                                  "$VXMESH_CNI_CONF_DIR or /etc/cni/net.d)")
    cni.set_defaults(func=cmd_cni)

    agent = sub.add_parser("agent", parents=[common], help="run the agent (systemd runs this)")
    agent.add_argument("--config", help="config file (default /etc/vxmesh/agent.toml)")
    agent.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override one config key (repeatable)")
    agent.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    agent.set_defaults(func=cmd_agent)

    lab = sub.add_parser("lab", parents=[common], help="a multi-host lab in network namespaces")
    lab.add_argument("--dir", default=None,
                     help="the lab's directory (default /run/vxmesh-lab); one lab per directory")
    lab.add_argument("--prefix", default=None,
                     help="namespace name prefix, 1-8 lower-case letters or digits (default vxl)")
    lab_sub = lab.add_subparsers(dest="action", required=True)
    up = lab_sub.add_parser("up", parents=[common], help="build the lab")
    up.add_argument("--hosts", type=int, default=3, help="number of hosts (2-16, default 3)")
    up.add_argument("--podman", action="store_true",
                    help="real rootful Podman (CNI backend, image vxmesh/busybox) on each host")
    up.add_argument("--etcd-members", type=int, default=1,
                    help="etcd cluster size, each member in its own namespace (default 1)")
    up.add_argument("--etcd-tls", action="store_true",
                    help="a lab CA made now; etcd members and agents on mutual TLS")
    up.add_argument("--docker", action="store_true",
                    help="also run one real dockerd per host with the agent as its plugin")
    lab_sub.add_parser("down", parents=[common], help="stop agents, etcd; delete namespaces")
    lab_sub.add_parser("status", parents=[common], help="hosts, agents, etcd")
    lab_exec = lab_sub.add_parser("exec", parents=[common], help="run a command on a host")
    lab_exec.add_argument("host")
    lab_exec.add_argument("command", nargs=argparse.REMAINDER)
    etcd = lab_sub.add_parser("etcd", parents=[common],
                              help="kill or start one etcd member; which member leads")
    etcd.add_argument("etcd_action", choices=("kill", "start", "leader"))
    etcd.add_argument("member", nargs="?", default=None, help="e1, e2, ... (kill, start)")
    demo = lab_sub.add_parser("demo", parents=[common],
                              help="network, endpoints, HTTP and ping across hosts")
    demo.add_argument("--hosts", type=int, default=3, help="hosts if the lab is not up yet")
    demo.add_argument("--docker", action="store_true",
                      help="Docker containers on a vxmesh network: ping and HTTP across hosts")
    vm_tier = lab_sub.add_parser(
        "vm", parents=[common],
        help="the VM tier: node1..nodeN as Debian VMs under qemu with the agent as its systemd "
             "unit, walk-through, restart, watchdog, ipvlan, halt (3 VMs: about 25 minutes)")
    vm_tier.add_argument("--nodes", type=int, default=3, help="VMs, 1-3 (default 3)")
    vm_tier.add_argument("--count", type=int, default=150,
                         help="pings per stream in each restart round (default 150, 0.2 s apart)")
    lab.set_defaults(func=cmd_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    args.socket = getattr(args, "socket", None)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"vxmesh: {exc}", file=sys.stderr)
        return exc.exit_code
    except AgentConfigError as exc:  # a person's input, named in the message
        print(f"vxmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as exc:
        print(f"vxmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vxmesh: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vxmesh ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141  # as a shell reports a process killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
