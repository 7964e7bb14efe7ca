"""The cluster's names: an index of the neighbor table's endpoints, and the answer to one query.

Owns: `DnsZone`, kept up to date from the table's `EndpointChanged` events (work in proportion
to the change), and `DnsZone.answer(wire, networks, rng)`, which turns one query's bytes into
either the response's bytes or a `Forward` (the query is not ours: send it upstream).

Rules:
- Names are those in each endpoint's record (`overlay.attributes`): its name and its aliases,
  answered as `NAME` and `NAME.NETWORK` for the networks the asking endpoint is on, and only
  those: a name on another network does not resolve.
- Several endpoints with one name (an alias) are all answered, shuffled by the injected RNG
  (round-robin); A for IPv4 addresses, AAAA for IPv6.
- PTR for the addresses of those networks' endpoints (`NAME.NETWORK.`); SRV for
  `_PORT._PROTO.NAME[.NETWORK]` where endpoints declare service ports (target
  `NAME.NETWORK.`, with the target's addresses in the additional section).
- Our zone is every single-label name, every name under a network the asker is on, and the
  reverse names of addresses in those networks' endpoints: a name there that no endpoint has is
  NXDOMAIN (NOERROR with no answer if the name exists with another type), never forwarded.
  Everything else is a `Forward`.
- TTL `ttl` seconds (default 2 s, weaveDNS uses 1 s, Docker 600 s), so a deleted endpoint stops
  resolving within the table's convergence plus the TTL.
- UDP answers fit the asker's size (512 bytes, or its EDNS payload size): what does not fit is
  truncated with TC set, and the client retries over TCP.
- Bytes that are not a DNS query are answered FORMERR when a header can be read, else dropped
  (`Dropped`); never an exception.
- Answers of our zone are cached as wire bytes per (networks, transport, query bytes after the
  ID) until the zone changes; a hit only puts the query's ID in front, so a busy resolver does
  not re-parse or re-render (a client that randomises letter case, "0x20", renders each
  spelling once). An answer with several records keeps up to `SHUFFLED_VARIANTS` shuffled
  copies, picked by the RNG.

Pure: takes the RNG; imports dnspython's wire format (no I/O), overlay's record types and the
standard library.
"""

from __future__ import annotations

import ipaddress
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from overlay.table import EndpointChanged, Entry

DEFAULT_TTL = 2
UDP_DEFAULT_PAYLOAD = 512
TCP_MAX = 65535
_HEADER = 12
SHUFFLED_VARIANTS = 8
CACHE_ENTRIES = 20_000
K = TypeVar("K")


@dataclass(frozen=True)
class Forward:
    """The query is not in our zone: send `wire` to an upstream resolver."""

    wire: bytes
    qtype: str


@dataclass(frozen=True)
class Dropped:
    """The bytes were not even a DNS header: nothing is sent back."""

    reason: str


@dataclass(frozen=True)
class Answered:
    """Our response: `wire` to send back, with the query type and the result for metrics."""

    wire: bytes
    qtype: str
    result: str  # "noerror", "nxdomain", "formerr", "notimp", "refused"


Outcome = Answered | Forward | Dropped


@dataclass
class _Network:
    """One network's names: name -> addresses, address -> names, (name, port, proto) -> addrs."""

    addresses: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    names_of: dict[str, list[str]] = field(default_factory=dict)
    services: dict[tuple[str, int, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))
    target_of: dict[str, str] = field(default_factory=dict)


class DnsZone:
    """The names of every endpoint the table shows, by network."""

    def __init__(self, ttl: int = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self._networks: dict[str, _Network] = {}
        self._cache: dict[tuple[object, ...], _Cached] = {}

    # ------------------------------------------------------------------ index upkeep

    def apply(self, event: EndpointChanged) -> None:
        """Follow one change of the table's view."""
        self._cache.clear()
        if event.previous is not None:
            self._remove(event.previous)
        if event.current is not None and not event.current.deleted:
            self._add(event.current)

    def load(self, entries: list[Entry]) -> None:
        """Start from the table's whole view (at start-up)."""
        self._cache.clear()
        self._networks.clear()
        for entry in entries:
            self._add(entry)

    def lookup(self, network: str, name: str) -> set[str]:
        """Addresses of `name` in `network` (tests and `vxmesh` tools)."""
        net = self._networks.get(network)
        return set(net.addresses.get(name.lower(), ())) if net else set()

    def _add(self, entry: Entry) -> None:
        names = entry.attributes.names
        if not names:
            return
        net = self._networks.setdefault(entry.network, _Network())
        for name in names:
            net.addresses[name].add(entry.ip)
            for port, proto in entry.attributes.ports:
                net.services[(name, port, proto)].add(entry.ip)
        net.names_of[entry.ip] = list(names)
        net.target_of[entry.ip] = f"{names[0]}.{entry.network}."

    def _remove(self, entry: Entry) -> None:
        net = self._networks.get(entry.network)
        if net is None:
            return
        for name in entry.attributes.names:
            _discard(net.addresses, name, entry.ip)
            for port, proto in entry.attributes.ports:
                _discard(net.services, (name, port, proto), entry.ip)
        if entry.attributes.names:
            net.names_of.pop(entry.ip, None)
            net.target_of.pop(entry.ip, None)
        if not net.names_of:
            del self._networks[entry.network]

    # ------------------------------------------------------------------ answering

    def answer(self, wire: bytes, networks: tuple[str, ...], rng: random.Random, *,
               tcp: bool = False) -> Outcome:
        """The outcome of one query from an endpoint on `networks`."""
        key = (networks, tcp, wire[2:])
        cached = self._cache.get(key)
        if cached is not None and cached.complete:
            variants = cached.variants
            body = variants[rng.randrange(len(variants))] if len(variants) > 1 else variants[0]
            return Answered(wire[:2] + body[2:], cached.qtype, cached.result)
        outcome = self._answer_parsed(wire, networks, rng, tcp)
        if not isinstance(outcome, Answered) or outcome.result not in ("noerror", "nxdomain"):
            return outcome
        if cached is None:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            several = _has_several_records(outcome.wire)
            cached = self._cache[key] = _Cached(outcome.qtype, outcome.result, [],
                                                SHUFFLED_VARIANTS if several else 1)
        cached.add(outcome.wire)
        return outcome

    def _answer_parsed(self, wire: bytes, networks: tuple[str, ...], rng: random.Random,
                       tcp: bool) -> Outcome:
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, IndexError) as exc:
            return self._format_error(wire, type(exc).__name__)
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return self._format_error(wire, "not one question")
        question = query.question[0]
        qtype = dns.rdatatype.to_text(question.rdtype)
        if query.opcode() != dns.opcode.QUERY:
            return self._reply(query, dns.rcode.NOTIMP, qtype, "notimp", tcp)
        if question.rdclass != dns.rdataclass.IN:
            return Forward(wire, qtype)
        qname = question.name.to_text(omit_final_dot=True).lower()
        found = self._resolve(qname, question.rdtype, networks, rng)
        if found is None:
            return Forward(wire, qtype)
        answers, additional = found
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        response.answer.extend(answers)
        response.additional.extend(additional)
        if not answers and not self._name_exists(qname, networks):
            response.set_rcode(dns.rcode.NXDOMAIN)
        result = "nxdomain" if response.rcode() == dns.rcode.NXDOMAIN else "noerror"
        return Answered(self._to_wire(response, query, tcp), qtype, result)

    def _resolve(self, qname: str, rdtype: int, networks: tuple[str, ...],
                 rng: random.Random) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]] | None:
        """(answer, additional) when `qname` is in our zone; None when it must be forwarded."""
        if qname.endswith((".in-addr.arpa", ".ip6.arpa")):
            return self._resolve_ptr(qname, rdtype, networks)
        scope = self._scope(qname, networks)
        if scope is None:
            return None
        name, where = scope
        if name.startswith("_") and rdtype == dns.rdatatype.SRV:
            return self._resolve_srv(qname, name, where, rng)
        wanted = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(dns.rdatatype.RdataType(rdtype))
        if rdtype == dns.rdatatype.ANY:
            wanted = 0
        if wanted is None:
            return [], []
        addresses = sorted({ip for net in where if net in self._networks
                            for ip in self._networks[net].addresses.get(name, ())})
        return self._address_rrsets(qname, addresses, wanted, rng), []

    def _scope(self, qname: str, networks: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
        """(label, networks to search) for a name in our zone, None for a foreign name."""
        if "." not in qname:
            return qname, networks
        for network in sorted(networks, key=len, reverse=True):
            if qname.endswith("." + network):
                head = qname[: -len(network) - 1]
                if head.startswith("_"):  # _port._proto.name.network
                    return head, (network,)
                if "." not in head:
                    return head, (network,)
        if qname.startswith("_") and qname.count(".") == 2:
            return qname, networks  # _port._proto.name
        return None

    def _resolve_srv(self, qname: str, label: str, networks: tuple[str, ...],
                     rng: random.Random) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        parts = label.split(".")
        if len(parts) != 3 or not parts[0][1:].isdigit() or parts[1] not in ("_tcp", "_udp"):
            return [], []
        port, proto, name = int(parts[0][1:]), parts[1][1:], parts[2]
        records: list[tuple[str, str]] = []
        for network in networks:
            net = self._networks.get(network)
            if net is None:
                continue
            for ip in sorted(net.services.get((name, port, proto), ())):
                records.append((net.target_of[ip], ip))
        rng.shuffle(records)
        if not records:
            return [], []
        srv = dns.rrset.from_text_list(qname + ".", self.ttl, "IN", "SRV",
                                       [f"0 0 {port} {target}" for target, _ in records])
        additional: list[dns.rrset.RRset] = []
        for target, ip in records:
            version = ipaddress.ip_address(ip).version
            additional.append(dns.rrset.from_text(target, self.ttl, "IN",
                                                  "A" if version == 4 else "AAAA", ip))
        return [srv], additional

    def _resolve_ptr(self, qname: str, rdtype: int, networks: tuple[str, ...]
                     ) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset]] | None:
        try:
            ip = str(dns.reversename.to_address(dns.name.from_text(qname)))
        except (dns.exception.DNSException, ValueError):
            return None
        for network in networks:
            net = self._networks.get(network)
            if net is not None and ip in net.target_of:
                if rdtype not in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                    return [], []
                return [dns.rrset.from_text(qname + ".", self.ttl, "IN", "PTR",
                                            net.target_of[ip])], []
        return None  # not an endpoint of ours: the upstream may know it

    def _address_rrsets(self, qname: str, addresses: list[str], wanted: int,
                        rng: random.Random) -> list[dns.rrset.RRset]:
        out: list[dns.rrset.RRset] = []
        for version, rdtype in ((4, "A"), (6, "AAAA")):
            if wanted not in (0, version):
                continue
            chosen = [ip for ip in addresses if ipaddress.ip_address(ip).version == version]
            if chosen:
                rng.shuffle(chosen)
                out.append(dns.rrset.from_text_list(qname + ".", self.ttl, "IN", rdtype,
                                                    chosen))
        return out

    def _name_exists(self, qname: str, networks: tuple[str, ...]) -> bool:
        scope = self._scope(qname, networks)
        if scope is None:
            return False
        name, where = scope
        if name.startswith("_"):
            parts = name.split(".")
            name = parts[-1]
        return any(name in self._networks[n].addresses for n in where if n in self._networks)

    def _reply(self, query: dns.message.Message, rcode: dns.rcode.Rcode, qtype: str,
               result: str, tcp: bool) -> Answered:
        response = dns.message.make_response(query, recursion_available=True)
        response.set_rcode(rcode)
        return Answered(self._to_wire(response, query, tcp), qtype, result)

    def _to_wire(self, response: dns.message.Message, query: dns.message.Message,
                 tcp: bool) -> bytes:
        limit = TCP_MAX if tcp else max(UDP_DEFAULT_PAYLOAD, min(query.payload, 4096))
        return response.to_wire(max_size=limit, prefer_truncation=True)

    @staticmethod
    def _format_error(wire: bytes, reason: str) -> Answered | Dropped:
        """FORMERR with the query's id and opcode when a header can be read, else nothing."""
        if len(wire) < _HEADER:
            return Dropped(reason)
        header = bytearray(wire[:_HEADER])
        if header[2] & 0x80:  # a response: never answer one (no loops)
            return Dropped("a response, not a query")
        header[2] = 0x80 | (header[2] & 0x78)  # QR, keep the opcode, clear AA/TC/RD
        header[3] = 0x80 | int(dns.rcode.FORMERR)  # RA + FORMERR
        header[4:12] = bytes(8)  # no sections
        return Answered(bytes(header), "invalid", "formerr")


@dataclass
class _Cached:
    """Rendered answers to one query: `variants` differ only in record order (one variant
    when the answer has a single record, up to `wanted` shuffled ones otherwise)."""

    qtype: str
    result: str
    variants: list[bytes]
    wanted: int
    complete: bool = False

    def add(self, wire: bytes) -> None:
        self.variants.append(wire)
        self.complete = len(self.variants) >= self.wanted


def _has_several_records(wire: bytes) -> bool:
    """More than one answer record (so that the order may be shuffled)."""
    return int.from_bytes(wire[6:8], "big") > 1


def _discard(index: dict[K, set[str]], key: K, ip: str) -> None:
    bucket = index.get(key)
    if bucket is None:
        return
    bucket.discard(ip)
    if not bucket:
        del index[key]
