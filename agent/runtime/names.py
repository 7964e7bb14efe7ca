"""Names for this host's endpoints: the zone kept from the table, the resolver in each sandbox.

Owns: `EndpointNames`, the glue between the neighbor table, the endpoint records and
agent.dns: every table event updates the zone (`table_event`); every overlay endpoint's
sandbox is served at 127.0.0.11:53 with the networks its endpoints are on (a sandbox with
endpoints on two networks resolves names of both); a namespace the agent made gets
`/etc/netns/<ns>/resolv.conf` (127.0.0.11, its networks as search domains, ndots:0), so
`vxmesh endpoint exec` and `ip netns exec` both use us. `attributes_of(record)` is what an
endpoint publishes about itself in its table entry.

Also every overlay network this host has joined is served at its gateway address (the
anycast gateway on the host's bridge), in the agent's own namespace, with the asker's network
told by its source address: that is where a runtime that owns its containers' resolver
(Docker's embedded DNS, with `--dns GATEWAY`) sends the names it does not know.

Rules:
- A sandbox handed back to its runtime (Docker's Join) is not served inside: the runtime owns
  its 127.0.0.11; the gateway address serves it instead.
- Serving a sandbox is best effort: a failure is logged and counted, never fails the attach.
- `dns.enabled = false` turns all of it off (names still travel in the table).

May import: agent.dns, agent.config, overlay, underlay, trio, the standard library.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
from collections.abc import Callable

from agent.api.attach import Attachment
from agent.config import DnsConfig, parse_resolver
from agent.dns.resolver import (
    RESOLVER_ADDRESS,
    DnsResolver,
    ResolverStatistics,
    remove_resolv_conf,
    upstreams_from_resolv_conf,
    write_resolv_conf,
)
from agent.dns.zone import DnsZone
from agent.store.schema import Network
from overlay.attributes import (
    LABEL,
    EndpointAttributes,
    InvalidAttributes,
    make_attributes,
    make_labels,
)
from overlay.table import EndpointChanged, Entry, TableEvent
from underlay.endpoints_model import EndpointRecord, Mode
from underlay.errors import UnderlayError

log = logging.getLogger("vxmesh.dns")


def attributes_of(record: EndpointRecord) -> EndpointAttributes:
    """The name (when the endpoint's name is a DNS label), aliases, service ports and policy
    labels an endpoint publishes in its table entry."""
    name = record.name if LABEL.fullmatch(record.name) else ""
    try:
        labels = make_labels(record.spec.labels)
    except InvalidAttributes as exc:  # checked at attach; a record from before the rules
        log.warning("endpoint %s: labels not published: %s", record.name, exc)
        labels = ()
    try:
        return make_attributes(name, record.spec.aliases, record.spec.services, labels)
    except InvalidAttributes as exc:  # a record from before the rules: publish the name only
        log.warning("endpoint %s: aliases or services not published: %s", record.name, exc)
        return make_attributes(name, labels=labels)


def sandbox_of(record: EndpointRecord) -> str | None:
    """The namespace (name or path) an endpoint's workload lives in, if we serve it."""
    if record.mode is not Mode.OVERLAY or record.spec.hand_back:
        return None
    return record.netns or record.sandbox


class EndpointNames:
    """The cluster's names in every local sandbox."""

    def __init__(self, config: DnsConfig, *, records: Callable[[], list[EndpointRecord]],
                 joined: Callable[[], list[Network]],
                 observe_latency: Callable[[float], None]) -> None:
        self.enabled = config.enabled
        upstreams = tuple(parse_resolver(u, key="dns.upstreams") for u in config.upstreams) \
            or upstreams_from_resolv_conf()
        self.zone = DnsZone(ttl=config.ttl)
        self.resolver = DnsResolver(self.zone, upstreams=upstreams, forward=config.forward,
                                    upstream_timeout=config.upstream_timeout,
                                    rng=random.Random(), observe_latency=observe_latency)
        self._records = records
        self._joined = joined
        self.serve_failures = 0

    def table_event(self, event: TableEvent) -> None:
        """Follow the table's view (never blocks)."""
        if isinstance(event, EndpointChanged):
            self.zone.apply(event)

    def load(self, entries: list[Entry]) -> None:
        """Start from the table's whole view."""
        self.zone.load(entries)

    def with_dns(self, attachment: Attachment) -> Attachment:
        """`attachment` with the resolver that serves its sandbox (none if not served)."""
        sandbox = attachment.netns or attachment.sandbox
        networks = self.resolver.served().get(sandbox or "")
        if not networks:
            return attachment
        return dataclasses.replace(attachment, nameservers=(RESOLVER_ADDRESS,),
                                   search=networks)

    def statistics(self) -> ResolverStatistics:
        return self.resolver.statistics()

    async def refresh(self) -> None:
        """Serve every local sandbox with its current networks; stop the ones gone."""
        if not self.enabled:
            return
        wanted: dict[str, set[str]] = {}
        named: set[str] = set()
        for record in self._records():
            sandbox = sandbox_of(record)
            if sandbox is None or not record.network:
                continue
            wanted.setdefault(sandbox, set()).add(record.network)
            if record.netns:
                named.add(sandbox)
        for sandbox in set(self.resolver.served()) - set(wanted):
            self.resolver.stop(sandbox)
            if "/" not in sandbox:
                remove_resolv_conf(sandbox)
        await self._refresh_gateways()
        served = self.resolver.served()
        for sandbox, networks in sorted(wanted.items()):
            ordered = tuple(sorted(networks))
            if served.get(sandbox) == ordered:
                continue  # served with these networks, its resolv.conf written: nothing to do
            try:
                await self.resolver.serve(sandbox, ordered)
                if sandbox in named:
                    write_resolv_conf(sandbox, ordered)
            except (UnderlayError, OSError) as exc:
                self.serve_failures += 1
                log.warning("dns: cannot serve %s: %s", sandbox, exc)

    async def _refresh_gateways(self) -> None:
        joined = [n for n in self._joined() if n.mode == "overlay"]
        wanted = {str(n.gateway) for n in joined}
        for address in self.resolver.gateways() - wanted:
            self.resolver.stop_gateway(address)

        def by_source(peer: str) -> tuple[str, ...]:
            try:
                ip = ipaddress.ip_address(peer)
            except ValueError:
                return ()
            return tuple(sorted(n.name for n in self._joined()
                                if n.subnet.version == ip.version and ip in n.subnet))

        for address in sorted(wanted - self.resolver.gateways()):
            try:
                await self.resolver.serve_gateway(address, by_source)
            except OSError as exc:
                self.serve_failures += 1
                log.warning("dns: cannot serve gateway %s: %s", address, exc)
