"""The text of our nftables tables: NAT and filtering for the local bridge networks (`ip`,
and `ip6` for the bridge networks with an IPv6 subnet) and the overlay networks' egress.

Owns: rendering one whole `table ip <name>` from the bridge networks and the endpoints on
them, and the transaction that replaces it atomically.

Rules:
- Pure: returns text; `underlay.nft` runs it. Deterministic order (networks as configured,
  endpoints by name, mappings as given), so the same state renders the same text.
- The transaction declares the table, deletes it and declares it again with its full body,
  in one `nft -f` run: atomic, and it touches no other table (never a flush of the ruleset).
- Per network in use: MASQUERADE of its subnet leaving by any other interface ("nat" mode),
  MASQUERADE of hairpin traffic (an endpoint reaching a published port of the same bridge,
  and 127.0.0.0/8 sources DNATed from the host itself), and a forward filter that lets into the
  bridge only replies, DNATed (published) connections and bridge-internal traffic ("nat"
  mode), like Docker's isolation; an "internal" network forwards nothing in or out. Published
  ports DNAT traffic addressed to any local address
  (or the given host address), from other hosts (prerouting) and from the host (output).
- Per overlay network this host has endpoints in (`OverlayEgress`): MASQUERADE of its subnet
  leaving by any other interface (the way out, unless internal), into its bridge only replies
  and DNATed connections, and never from one overlay bridge to another (isolation on one host;
  traffic inside an overlay is bridged, never forwarded, so no rule touches it); the same
  for IPv6 in `ip6` for the overlays with an IPv6 subnet (IPv6 MASQUERADE out unless internal).

May import: the standard library and underlay.endpoints_model.
"""

from __future__ import annotations

from dataclasses import dataclass

from underlay.endpoints_model import BridgeNetwork, EndpointRecord, Mode


@dataclass(frozen=True)
class OverlayEgress:
    """An overlay network this host has endpoints in: its bridge, IPv4 subnet (and IPv6 one,
    if any) and whether it is internal. Its endpoints leave the overlay through NAT on this
    host (Docker's docker_gwbridge role) unless internal; two overlay networks never forward
    to each other."""

    name: str
    bridge: str
    subnet: str
    internal: bool = False
    subnet6: str | None = None


def _overlay_rules(overlays: tuple[OverlayEgress, ...], version: int = 4
                   ) -> tuple[list[str], list[str]]:
    """(postrouting, forward) rules of the overlay networks for IPv4 (`ip` table) or IPv6
    (`ip6` table: the overlays with an IPv6 subnet)."""
    postrouting: list[str] = []
    forward: list[str] = []
    if version == 6:
        overlays = tuple(o for o in overlays if o.subnet6 is not None)
    bridges = [o.bridge for o in overlays]
    for net in overlays:
        br = f'"{net.bridge}"'
        others = [b for b in bridges if b != net.bridge]
        if others:
            quoted = ", ".join(f'"{b}"' for b in others)
            forward.append(f"iifname {br} oifname {{ {quoted} }} drop")
        if net.internal:
            forward.append(f"iifname {br} oifname != {br} drop")
            forward.append(f"oifname {br} iifname != {br} drop")
            continue
        if version == 4:
            postrouting.append(f"ip saddr {net.subnet} oifname != {br} masquerade")
        else:
            postrouting.append(f"ip6 saddr {net.subnet6} oifname != {br} masquerade")
        forward.append(f"oifname {br} ct state established,related accept")
        forward.append(f"oifname {br} ct status dnat accept")
        forward.append(f"oifname {br} iifname != {br} drop")
    return postrouting, forward


def _published_rules(records: list[EndpointRecord]) -> list[str]:
    rules = []
    for record in sorted(records, key=lambda r: r.name):
        if record.mode is not Mode.BRIDGE or not record.spec.publish:
            continue
        target = record.addresses[0].split("/")[0]
        for mapping in record.spec.publish:
            match = f"ip daddr {mapping.host_ip} " if mapping.host_ip else ""
            rules.append(f'{match}{mapping.proto} dport {mapping.host_port} '
                         f'dnat to {target}:{mapping.port} comment "{record.name}"')
    return rules


def render_table(table: str, networks: tuple[BridgeNetwork, ...],
                 records: list[EndpointRecord], overlays: tuple[OverlayEgress, ...] = ()) -> str:
    """The body `table ip <table> { ... }` for the networks that have endpoints."""
    in_use = [net for net in networks
              if any(r.mode is Mode.BRIDGE and r.network == net.name for r in records)]
    postrouting: list[str] = []
    forward: list[str] = []
    for net in in_use:
        br, subnet = f'"{net.ifname}"', net.subnet
        if net.gateway_mode == "internal":  # only among its own endpoints, no way in or out
            forward.append(f"iifname {br} oifname != {br} drop")
            forward.append(f"oifname {br} iifname != {br} drop")
        postrouting.append(f"ip saddr {subnet} ip daddr {subnet} ct status dnat masquerade")
        postrouting.append(f"oifname {br} ip saddr 127.0.0.0/8 masquerade")
        if net.gateway_mode == "nat":
            postrouting.append(f"ip saddr {subnet} oifname != {br} masquerade")
        forward.append(f"oifname {br} ct state established,related accept")
        forward.append(f"oifname {br} ct status dnat accept")
        forward.append(f"oifname {br} iifname {br} accept")
        if net.gateway_mode == "nat":
            forward.append(f"oifname {br} drop")

    overlay_postrouting, overlay_forward = _overlay_rules(overlays)
    postrouting += overlay_postrouting
    forward += overlay_forward

    def chain(name: str, hook: str | None, rules: list[str]) -> str:
        lines = [f"  chain {name} {{"]
        if hook:
            lines.append(f"    {hook}; policy accept;")
        lines.extend(f"    {rule}" for rule in rules)
        lines.append("  }")
        return "\n".join(lines)

    body = [
        chain("published", None, _published_rules(records)),
        chain("prerouting", "type nat hook prerouting priority dstnat",
              ["fib daddr type local jump published"]),
        chain("output", "type nat hook output priority -100",
              ["fib daddr type local jump published"]),
        chain("postrouting", "type nat hook postrouting priority srcnat", postrouting),
        chain("forward", "type filter hook forward priority filter", forward),
    ]
    return f"table ip {table} {{\n" + "\n".join(body) + "\n}\n"


def render_table6(table: str, networks: tuple[BridgeNetwork, ...],
                  records: list[EndpointRecord], overlays: tuple[OverlayEgress, ...] = ()
                  ) -> str:
    """`table ip6 <table>`: the IPv6 side of the bridge networks in use that have a subnet6
    and of the overlay networks that have one (MASQUERADE out unless internal or routed, the
    same isolation as IPv4)."""
    postrouting: list[str] = []
    forward: list[str] = []
    for net in networks:
        if net.subnet6 is None or not any(r.mode is Mode.BRIDGE and r.network == net.name
                                          for r in records):
            continue
        br, subnet = f'"{net.ifname}"', net.subnet6
        if net.gateway_mode == "internal":
            forward.append(f"iifname {br} oifname != {br} drop")
            forward.append(f"oifname {br} iifname != {br} drop")
        if net.gateway_mode == "nat":
            postrouting.append(f"ip6 saddr {subnet} oifname != {br} masquerade")
        forward.append(f"oifname {br} ct state established,related accept")
        forward.append(f"oifname {br} iifname {br} accept")
        if net.gateway_mode == "nat":
            forward.append(f"oifname {br} drop")
    overlay_postrouting, overlay_forward = _overlay_rules(overlays, 6)
    postrouting += overlay_postrouting
    forward += overlay_forward
    lines = [f"table ip6 {table} {{",
             "  chain postrouting {",
             "    type nat hook postrouting priority srcnat; policy accept;",
             *(f"    {rule}" for rule in postrouting), "  }",
             "  chain forward {",
             "    type filter hook forward priority filter; policy accept;",
             *(f"    {rule}" for rule in forward), "  }", "}"]
    return "\n".join(lines) + "\n"


def replace_transaction(table: str, networks: tuple[BridgeNetwork, ...],
                        records: list[EndpointRecord],
                        overlays: tuple[OverlayEgress, ...] = ()) -> str:
    """One atomic `nft -f` script replacing our tables, `ip` and `ip6` (or removing them if
    nothing uses them)."""
    script = f"table ip {table}\ndelete table ip {table}\n"
    if any(r.mode is Mode.BRIDGE for r in records) or overlays:
        script += render_table(table, networks, records, overlays)
    script += f"table ip6 {table}\ndelete table ip6 {table}\n"
    if any(net.subnet6 for net in networks) or any(o.subnet6 for o in overlays):
        script += render_table6(table, networks, records, overlays)
    return script
