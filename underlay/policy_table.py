"""Network policy as nftables content: one table of vxmesh's own, one named set per selector.

Owns: `PolicyRule` and `PolicyEndpoint` (what the rules are computed from), `plan_policy`
(the whole table for one host: rules, sets with their elements, one named counter per
policy) and `policy_transaction` (the one `nft -f` script taking the kernel from the previous
plan to the next). Pure: the standard library only.

Semantics (Kubernetes NetworkPolicy):
- an endpoint no policy selects in a direction allows everything in that direction;
- once selected, that direction is deny by default plus the union of every selecting
  policy's allows (a peer set or CIDR, optionally only some ports);
- ingress is enforced on the destination's host, egress on the source's host: a policy's
  "selected" set holds only this host's endpoints, its peer sets every endpoint of the
  network (any host) with the label;
- established and related traffic always returns (conntrack, first rule).
Cost: only a flow's first packet reaches the policy chains. There, traffic of an endpoint no
policy selects in that direction leaves after one lookup in the direction's `*_selected_4/6`
set (the union of its selected sets, kept by element like them; without it such a packet
walked every rule: about 1 ms at 1,000 policies), and a selected endpoint's walks the allows
in policy order (about 0.5 ms at 1,000 policies when its own is the last; bench/policy.py).
Rules live in the `inet` family forward hook: bridged traffic reaches it through
br_netfilter (bridge-family conntrack is not available). A packet both egress and ingress
policies see (two endpoints of this host) must pass both: the egress chain only `return`s on
an allow.

Counting and logging: every allow comes before any deny, so a packet that reaches the deny
part of a chain was allowed by none of the policies selecting it; each of them counts it in
its own named counter (a packet denied at an endpoint two policies select counts for both),
and a policy with `log` sends it (at most `LOG_RATE`) to nflog group `LOG_GROUP` with the
prefix `vxmesh-policy NAME ` (read it with `tcpdump -i nflog:LOG_GROUP` or ulogd; nflog, not
the kernel log, because the kernel drops netfilter log lines of any namespace but the first
unless `net.netfilter.nf_log_all_netns` is set). Then one drop per selected set.

Rules:
- The rules depend on the policies only; an endpoint that comes or goes changes set
  elements (`add element` / `delete element`), never the rules.
- Every transaction is one script (nft applies it all or nothing). A rules change flushes and
  refills the chains and sets in place, so the named counters of kept policies keep counting.
- Set and counter names are derived from what they stand for (a hash), so the same selector
  is the same set in every plan.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

TABLE = "vxmesh_policy"
FAMILY = "inet"
ADDRESS_FAMILIES = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))
LOG_GROUP = 100
"""The nflog group denied packets of a policy with `log` go to."""
LOG_RATE = "10/second"
"""At most this many denied packets per policy and IP version are logged (nft `limit`)."""
LOG_PREFIX = "vxmesh-policy "


@dataclass(frozen=True)
class PolicyRule:
    """One policy: in `network`, endpoints labelled `select` accept (or, `egress`, send) only
    from (to) endpoints with one of `allow_labels` or an address in `allow_cidrs`, on `ports`
    (empty: every port); `log`: denied packets are logged too."""

    name: str
    network: str
    egress: bool
    select: tuple[str, str]
    allow_labels: tuple[tuple[str, str], ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    ports: tuple[tuple[int, str], ...] = ()
    log: bool = False


@dataclass(frozen=True)
class PolicyEndpoint:
    """An endpoint as policy sees it: its network, address, labels, and whether it is ours."""

    network: str
    ip: str
    labels: tuple[tuple[str, str], ...]
    local: bool


@dataclass(frozen=True)
class PolicyPlan:
    """The whole table: `rules` (the chains' text, set declarations included), the elements
    of every set by name, and the counter name of every policy by policy name."""

    declarations: str
    chains: str
    sets: dict[str, frozenset[str]]
    counters: dict[str, str]

    @property
    def rules(self) -> str:
        return f"{self.declarations}\n{self.chains}"


def _name(kind: str, *parts: object) -> str:
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
    return f"{kind}_{digest}"


def _set_name(network: str, label: tuple[str, str], local: bool, version: int) -> str:
    return _name("l" if local else "a", network, label) + f"_{version}"


def _any_selected_name(egress: bool, version: int) -> str:
    return f"{'egress' if egress else 'ingress'}_selected_{version}"


def counter_name(policy: str) -> str:
    return _name("c", policy)


def plan_policy(rules: Iterable[PolicyRule], endpoints: Iterable[PolicyEndpoint]) -> PolicyPlan:
    """The table for this host: every policy's rules and the elements of every set."""
    ordered = sorted(set(rules), key=lambda r: r.name)
    wanted: dict[str, tuple[str, tuple[str, str], bool, int]] = {}
    counters = {r.name: counter_name(r.name) for r in ordered}
    any_selected: dict[tuple[bool, int], str] = {}  # (egress, IP version) -> union set name
    allow_lines: dict[bool, list[str]] = {False: [], True: []}
    count_lines: dict[bool, list[str]] = {False: [], True: []}
    drop_lines: dict[bool, dict[str, None]] = {False: {}, True: {}}  # one per selected set
    for rule in ordered:
        own, peer = ("saddr", "daddr") if rule.egress else ("daddr", "saddr")
        verdict = "return" if rule.egress else "accept"
        for version, keyword, _ in ADDRESS_FAMILIES:
            selected = _set_name(rule.network, rule.select, True, version)
            wanted[selected] = (rule.network, rule.select, True, version)
            any_selected[(rule.egress, version)] = _any_selected_name(rule.egress, version)
            peers: list[str] = []
            for label in rule.allow_labels:
                name = _set_name(rule.network, label, False, version)
                wanted[name] = (rule.network, label, False, version)
                peers.append(f"@{name}")
            cidrs = [c for c in rule.allow_cidrs if ipaddress.ip_network(c).version == version]
            if cidrs:
                peers.append("{ " + ", ".join(cidrs) + " }")
            for match in peers:
                for ports in _port_matches(rule.ports):
                    allow_lines[rule.egress].append(
                        f"{keyword} {own} @{selected} {keyword} {peer} {match}{ports} {verdict}")
            logged = (f' limit rate {LOG_RATE} log prefix "{LOG_PREFIX}{rule.name} "'
                      f" group {LOG_GROUP}" if rule.log else "")
            count_lines[rule.egress].append(
                f"{keyword} {own} @{selected} counter name {counters[rule.name]}{logged}")
            drop_lines[rule.egress][f"{keyword} {own} @{selected} drop"] = None
    elements: dict[str, frozenset[str]] = {name: frozenset() for name in wanted}
    for endpoint in endpoints:
        try:
            version = ipaddress.ip_address(endpoint.ip).version
        except ValueError:
            continue
        for label in endpoint.labels:
            for local in (True, False) if endpoint.local else (False,):
                name = _set_name(endpoint.network, label, local, version)
                if name in elements:
                    elements[name] = elements[name] | {endpoint.ip}
    kinds = {version: kind for version, _, kind in ADDRESS_FAMILIES}
    keywords = {version: keyword for version, keyword, _ in ADDRESS_FAMILIES}
    skip_lines: dict[bool, list[str]] = {False: [], True: []}
    for (egress, version), name in sorted(any_selected.items()):
        elements[name] = frozenset().union(*(
            elements[_set_name(r.network, r.select, True, version)]
            for r in ordered if r.egress == egress))
        own = "saddr" if egress else "daddr"
        skip_lines[egress].append(f"{keywords[version]} {own} != @{name} return")
    declarations = [f"  counter {c} {{ }}" for c in counters.values()]
    for name, (_, _, _, version) in sorted(wanted.items()):
        declarations.append(f"  set {name} {{ type {kinds[version]}; }}")
    for (_, version), name in sorted(any_selected.items()):
        declarations.append(f"  set {name} {{ type {kinds[version]}; }}")
    chains = [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        "    ct state established,related accept",
        "    jump egress",
        "    jump ingress",
        "  }",
        *(line for egress, chain in ((True, "egress"), (False, "ingress")) for line in (
            f"  chain {chain} {{",
            *(f"    {rule}" for rule in [*skip_lines[egress], *allow_lines[egress],
                                         *count_lines[egress], *drop_lines[egress]]),
            "  }")),
    ]
    return PolicyPlan("\n".join(declarations), "\n".join(chains), elements, counters)


def _port_matches(ports: tuple[tuple[int, str], ...]) -> list[str]:
    if not ports:
        return [""]
    by_proto: dict[str, list[int]] = {}
    for port, proto in ports:
        by_proto.setdefault(proto, []).append(port)
    return [f" meta l4proto {proto} th dport {{ {', '.join(str(p) for p in sorted(numbers))} }}"
            for proto, numbers in sorted(by_proto.items())]


def _elements(command: str, name: str, addresses: Iterable[str]) -> list[str]:
    listed = sorted(addresses)
    if not listed:
        return []
    return [f"{command} element {FAMILY} {TABLE} {name} {{ {', '.join(listed)} }}"]


def policy_transaction(previous: PolicyPlan | None, plan: PolicyPlan) -> str | None:
    """The script from `previous` (what the kernel holds; None: unknown) to `plan`, or None
    when nothing changes. Same rules: element changes only. Else the chains and sets are
    flushed and refilled in place, gone sets and counters deleted after the rules."""
    lines: list[str] = []
    table = f"{FAMILY} {TABLE}"
    if previous is None:  # whatever a previous run left: replaced whole, in the same script
        lines += [f"table {table} {{ }}", f"delete table {table}",
                  f"table {table} {{\n{plan.rules}\n}}"]
        for name, addresses in sorted(plan.sets.items()):
            lines += _elements("add", name, addresses)
        return "\n".join(lines) + "\n"
    if previous.rules == plan.rules:
        for name, addresses in sorted(plan.sets.items()):
            before = previous.sets.get(name, frozenset())
            lines += _elements("delete", name, before - addresses)
            lines += _elements("add", name, addresses - before)
        return "\n".join(lines) + "\n" if lines else None
    lines.append(f"table {table} {{\n{plan.declarations}\n}}")  # declares what is missing
    for chain in ("forward", "egress", "ingress"):
        lines.append(f"flush chain {table} {chain}")
    for name in sorted(previous.sets):
        lines.append(f"flush set {table} {name}")
    lines.append(f"table {table} {{\n{plan.chains}\n}}")
    old_sets = set(previous.sets)
    old_counters = set(previous.counters.values())
    for name in sorted(old_sets - set(plan.sets)):
        lines.append(f"delete set {table} {name}")
    for name in sorted(old_counters - set(plan.counters.values())):
        lines.append(f"delete counter {table} {name}")
    for name, addresses in sorted(plan.sets.items()):
        lines += _elements("add", name, addresses)
    return "\n".join(lines) + "\n"


def removal_transaction() -> str:
    """The script that takes the whole table away (no policy left)."""
    return f"table {FAMILY} {TABLE} {{ }}\ndelete table {FAMILY} {TABLE}\n"
