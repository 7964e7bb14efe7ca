"""agent.dns.zone: names from table records, scoped by network; A/AAAA/PTR/SRV; NXDOMAIN for
our zone, Forward for the rest; truncation; garbage answered FORMERR or dropped."""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.dns.zone import SHUFFLED_VARIANTS, Answered, DnsZone, Dropped, Forward
from overlay.attributes import make_attributes
from overlay.table import EndpointChanged, Entry


def entry(network: str, ip: str, name: str = "", aliases: tuple[str, ...] = (),
          ports: tuple[str, ...] = (), owner: str = "h1") -> Entry:
    return Entry(network, ip, "02:42:0a:00:00:02", owner, "10.77.0.11", 1,
                 attributes=make_attributes(name, aliases, ports))


def zone_with(*entries: Entry) -> DnsZone:
    zone = DnsZone(ttl=2)
    for e in entries:
        zone.apply(EndpointChanged(e.network, e.ip, None, e))
    return zone


def ask(zone: DnsZone, name: str, rdtype: str = "A", networks: tuple[str, ...] = ("blue",),
        seed: int = 1, payload: int | None = None) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=payload is not None,
                                   payload=payload or 512)
    outcome = zone.answer(query.to_wire(), networks, random.Random(seed))
    assert isinstance(outcome, Answered), outcome
    return dns.message.from_wire(outcome.wire)


def addresses(message: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in message.answer for r in rrset]


def test_name_and_name_dot_network_resolve_with_short_ttl() -> None:
    zone = zone_with(entry("blue", "10.10.0.2", "web"))
    for qname in ("web", "web.blue", "WEB.Blue."):
        reply = ask(zone, qname)
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == ["10.10.0.2"]
        assert reply.answer[0].ttl == 2
        assert reply.flags & dns.flags.AA


def test_a_name_on_another_network_does_not_resolve() -> None:
    zone = zone_with(entry("red", "10.20.0.2", "db"))
    assert ask(zone, "db").rcode() == dns.rcode.NXDOMAIN
    assert ask(zone, "db", networks=("red",)).rcode() == dns.rcode.NOERROR


def test_alias_answers_every_endpoint_shuffled() -> None:
    zone = zone_with(entry("blue", "10.10.0.2", "a1", ("api",)),
                     entry("blue", "10.10.0.3", "a2", ("api",), owner="h2"),
                     entry("blue", "10.10.0.4", "a3", ("api",), owner="h3"))
    orders = {tuple(addresses(ask(zone, "api", seed=s))) for s in range(30)}
    assert all(sorted(o) == ["10.10.0.2", "10.10.0.3", "10.10.0.4"] for o in orders)
    assert len(orders) > 1


def test_aaaa_ptr_and_srv() -> None:
    zone = zone_with(entry("blue", "fd00::5", "v6"),
                     entry("blue", "10.10.0.7", "web", ("www",), ("80/tcp",)))
    assert addresses(ask(zone, "v6", "AAAA")) == ["fd00::5"]
    assert ask(zone, "v6", "A").answer == [] and ask(zone, "v6", "A").rcode() == 0
    reverse = dns.reversename.from_address("10.10.0.7").to_text()
    assert addresses(ask(zone, reverse, "PTR")) == ["web.blue."]
    srv = ask(zone, "_80._tcp.www", "SRV")
    assert addresses(srv) == ["0 0 80 web.blue."]
    assert [r.to_text() for rrset in srv.additional for r in rrset] == ["10.10.0.7"]
    assert ask(zone, "_81._tcp.www", "SRV").answer == []


def test_delete_stops_resolving() -> None:
    e = entry("blue", "10.10.0.2", "web")
    zone = zone_with(e)
    zone.apply(EndpointChanged("blue", "10.10.0.2", e, None))
    assert ask(zone, "web").rcode() == dns.rcode.NXDOMAIN
    assert zone.lookup("blue", "web") == set()


def test_foreign_names_are_forwarded_ours_never() -> None:
    zone = zone_with(entry("blue", "10.10.0.2", "web"))
    query = dns.message.make_query("example.org", "A").to_wire()
    assert isinstance(zone.answer(query, ("blue",), random.Random(1)), Forward)
    assert ask(zone, "nothere.blue").rcode() == dns.rcode.NXDOMAIN
    assert ask(zone, "nothere").rcode() == dns.rcode.NXDOMAIN


def test_udp_answer_that_does_not_fit_is_truncated() -> None:
    many = [entry("blue", f"10.10.{i // 250}.{i % 250 + 2}", f"n{i}", ("big",), owner=f"h{i}")
            for i in range(120)]
    zone = zone_with(*many)
    reply = ask(zone, "big")
    assert reply.flags & dns.flags.TC
    query = dns.message.make_query("big", "A").to_wire()
    outcome = zone.answer(query, ("blue",), random.Random(1), tcp=True)
    assert isinstance(outcome, Answered)
    assert len(addresses(dns.message.from_wire(outcome.wire))) == 120


def test_garbage_is_formerr_or_dropped() -> None:
    zone = DnsZone()
    assert isinstance(zone.answer(b"\x01\x02", ("blue",), random.Random(1)), Dropped)
    outcome = zone.answer(b"\x12\x34" + b"\x01\x00" + b"\xff" * 20, ("blue",), random.Random(1))
    assert isinstance(outcome, Answered) and outcome.result == "formerr"
    reply = dns.message.from_wire(outcome.wire)
    assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_never_raise(data: bytes) -> None:
    zone = zone_with(entry("blue", "10.10.0.2", "web"))
    outcome = zone.answer(data, ("blue",), random.Random(1))
    assert isinstance(outcome, Answered | Forward | Dropped)


def test_cached_answers_carry_the_query_id_and_case_and_follow_changes() -> None:
    e = entry("blue", "10.10.0.2", "web")
    zone = zone_with(e)
    for query_id, qname in ((1, "web"), (2, "WeB"), (3, "web.BLUE")):
        query = dns.message.make_query(qname, "A")
        query.id = query_id
        outcome = zone.answer(query.to_wire(), ("blue",), random.Random(1))
        assert isinstance(outcome, Answered)
        reply = dns.message.from_wire(outcome.wire)
        assert reply.id == query_id and reply.question[0].name.to_text() == qname + "."
        assert addresses(reply) == ["10.10.0.2"]
    zone.apply(EndpointChanged("blue", "10.10.0.2", e, None))
    assert ask(zone, "web").rcode() == dns.rcode.NXDOMAIN


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["web", "api", "WEB.blue", "api.red", "nx", "_80._tcp.api"]),
       st.sampled_from(["A", "AAAA", "SRV", "TXT"]), st.booleans(), st.integers(0, 2**16 - 1))
def test_cache_agrees_with_a_fresh_zone(qname: str, rdtype: str, edns: bool,
                                        query_id: int) -> None:
    entries = [entry("blue", "10.10.0.2", "web", ("api",), ("80/tcp",)),
               entry("blue", "10.10.0.3", "web2", ("api",), ("80/tcp",), owner="h2")]
    warm = zone_with(*entries)
    query = dns.message.make_query(qname, rdtype, use_edns=edns)
    query.id = query_id
    for _ in range(SHUFFLED_VARIANTS + 2):
        warm.answer(query.to_wire(), ("blue",), random.Random(3))
    hit = warm.answer(query.to_wire(), ("blue",), random.Random(4))
    fresh = zone_with(*entries).answer(query.to_wire(), ("blue",), random.Random(4))
    assert type(hit) is type(fresh)
    if isinstance(hit, Answered) and isinstance(fresh, Answered):
        a, b = dns.message.from_wire(hit.wire), dns.message.from_wire(fresh.wire)
        assert a.id == b.id == query_id and a.rcode() == b.rcode() and a.flags == b.flags
        assert sorted(addresses(a)) == sorted(addresses(b))
        assert a.question == b.question
