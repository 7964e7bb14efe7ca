"""The one operation behind every front door: attach a sandbox to a network, and detach it.

Owns: the request and result types every front door speaks (`vxmesh endpoint create` through
the control API, Docker's Join, CNI ADD, later names and labels for DNS). A front door only
translates its protocol into an `AttachRequest` and the `Attachment` (or a domain error,
mapped by `agent.api.errors`) back; the agent does the rest in one place
(`agent.runtime.attachments.Attachments`): address from IPAM (or the chosen one), veth into
the sandbox, MTU, MAC, routes, the local record, the neighbor-table entry and its gossip.

Sandboxes (where the workload's interface goes):
- `NewNamespace()`: a namespace the agent makes and owns, `<prefix><name>` (the CLI).
- `ExistingNetns(path)`: a namespace the runtime made (CNI's `CNI_NETNS`, `/proc/PID/ns/net`);
  the interface is created inside it as `ifname`, the namespace is never deleted by us.
- `HandBackVeth()`: the veth peer stays in the host namespace, MTU and MAC set, under the name
  `Attachment.handed_back`, for the runtime to move and configure (Docker's Join returns it as
  `InterfaceName.SrcName`; Docker sets the address, gateway and routes from our answer).

Rules: pure data, frozen; `name` is the attachment's identity on this host (a front door
derives it from its own ids, within `agent.api.routes.NAME_PATTERN`); detaching is idempotent
(`Attachments.detach` returns False for a name it does not hold).

May import: underlay.endpoints_model (modes and port types), the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

from underlay.endpoints_model import INSIDE_IFNAME, Mode, PortClaim, PortMapping


@dataclass(frozen=True)
class NewNamespace:
    """A namespace the agent makes, owns and deletes with the attachment."""


@dataclass(frozen=True)
class ExistingNetns:
    """A namespace the runtime owns, given by its path; the interface goes into it."""

    path: str


@dataclass(frozen=True)
class HandBackVeth:
    """The veth peer is left in the host namespace for the runtime to move (Docker)."""


Sandbox = NewNamespace | ExistingNetns | HandBackVeth


@dataclass(frozen=True)
class AttachRequest:
    """Attach sandbox `name` to `network`.

    mode: overlay (a vxmesh network: IPAM, table, gossip) or a local mode (bridge, host,
      none, macvlan, ipvlan), which touch neither IPAM nor the table.
    ifname: the interface's name inside the sandbox (ignored for HandBackVeth).
    ip: a chosen address (checked and recorded in the network's IPAM), else the next free one.
    ip6: a chosen IPv6 address on a network with an IPv6 subnet (bridge: else the lowest
      free one; overlay: else the next free one of this host's IPv6 block).
    mac: a chosen MAC, else Docker's rule from the address (`underlay.endpoints_model`).
    publish, ports: bridge mode published ports, host mode port claims.
    aliases, labels: carried into the attachment for name service and policy.
    services: (port, protocol) pairs it serves, answered as SRV records by the resolver.
    """

    name: str
    network: str
    mode: Mode = Mode.OVERLAY
    sandbox: Sandbox = NewNamespace()
    ifname: str = INSIDE_IFNAME
    ip: str | None = None
    ip6: str | None = None
    mac: str | None = None
    publish: tuple[PortMapping, ...] = ()
    ports: tuple[PortClaim, ...] = ()
    aliases: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    services: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """A route inside the sandbox: `destination` (CIDR) via `gateway` (None: on link)."""

    destination: str
    gateway: str | None = None


@dataclass(frozen=True)
class Attachment:
    """An attached sandbox, as every front door reports it.

    addresses: CIDRs on the interface (the first is `ip` with its prefix length).
    netns: the named namespace the agent made for it (NewNamespace; `ip netns exec` takes it).
    sandbox: the path of the namespace the interface lives in (None: host mode, or handed
      back). ifname: the interface's name there.
    host_ifname: the host-side veth (bridge, overlay). handed_back: HandBackVeth's peer name.
    gateway: the default route's next hop (None: the network is routed on link only).
    gateway6: the IPv6 default route's next hop (a network with an IPv6 subnet), else None.
    routes: every route inside the sandbox besides the connected subnet.
    nameservers, search: the resolver serving the sandbox (127.0.0.11) and its search
      domains (the networks), for a runtime that writes the sandbox's resolv.conf (CNI).
    """

    name: str
    network: str
    mode: Mode
    node: str
    ip: str | None
    addresses: tuple[str, ...]
    mac: str | None
    mtu: int | None
    gateway: str | None
    routes: tuple[Route, ...]
    netns: str | None
    sandbox: str | None
    ifname: str | None
    host_ifname: str | None
    handed_back: str | None
    bridge: str | None
    state: str
    gateway6: str | None = None
    publish: tuple[PortMapping, ...] = ()
    ports: tuple[PortClaim, ...] = ()
    aliases: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    services: tuple[tuple[int, str], ...] = ()
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
