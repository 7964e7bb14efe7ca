"""Network policy's pure parts: labels (API and wire), the stored policy, the nftables plan."""

from __future__ import annotations

import ipaddress
import json

import pytest

from agent.store.errors import InvalidPolicy
from agent.store.network_view import KeyChange, PolicyView, RecordAdded, RecordRemoved
from agent.store.schema import MalformedRecord, decode_policy, encode, policy_key, validate_policy
from overlay.attributes import (
    MAX_LABEL_BYTES,
    MAX_LABELS,
    InvalidAttributes,
    make_attributes,
    make_labels,
)
from overlay.dissemination import TableWireError, decode_records, encode_record
from overlay.table import Entry
from underlay.policy_table import (
    LOG_GROUP,
    LOG_PREFIX,
    LOG_RATE,
    PolicyEndpoint,
    PolicyRule,
    plan_policy,
    policy_transaction,
)


def test_labels_are_validated_sorted_and_bounded() -> None:
    assert make_labels(["tier=db", ("app", "shop")]) == (("app", "shop"), ("tier", "db"))
    assert make_labels(["k8s.io/role="]) == (("k8s.io/role", ""),)
    for bad in ("novalue", "a b=c", "a=b/c", "=v", ("a", 1)):
        with pytest.raises(InvalidAttributes, match=r"labels\[0\]"):
            make_labels([bad])
    with pytest.raises(InvalidAttributes, match="given twice"):
        make_labels(["a=1", "a=2"])
    with pytest.raises(InvalidAttributes, match=f"at most {MAX_LABELS}"):
        make_labels([f"k{i}=v" for i in range(MAX_LABELS + 1)])
    with pytest.raises(InvalidAttributes, match=f"at most {MAX_LABEL_BYTES} characters"):
        make_labels([f"k{i}={'v' * 60}" for i in range(MAX_LABELS)])


def _entry(attributes: object) -> Entry:
    return Entry("blue", "10.0.0.2", "02:00:00:00:00:02", "h1", "192.0.2.1", 3,
                 changed_at=1.0, attributes=attributes)  # type: ignore[arg-type]


def test_labels_travel_in_the_table_entry_and_are_checked_on_receipt() -> None:
    labelled = _entry(make_attributes("web", labels=["app=web"]))
    (decoded,) = decode_records(encode_record(labelled, 0.0), 0.0)
    assert isinstance(decoded, Entry) and decoded.attributes.labels == (("app", "web"),)
    unlabelled = _entry(make_attributes("web"))
    (plain,) = decode_records(encode_record(unlabelled, 0.0), 0.0)
    assert isinstance(plain, Entry) and plain.attributes.labels == ()
    odd = encode_record(_entry(make_attributes("web", labels=["app=zzz"])), 0.0)
    with pytest.raises(TableWireError, match=r"labels\[0\]"):
        decode_records(odd.replace(b"zzz", b"z z"), 0.0)


def test_a_policy_is_validated_naming_the_field_and_round_trips() -> None:
    policy = validate_policy(name="db-in", network="blue", direction="ingress",
                             select="app=db", allow=["app=web", "10.9.0.0/16"],
                             ports=["5432/tcp", "5432/tcp", "53/udp"])
    assert policy.allow == (("app", "web"), ipaddress.ip_network("10.9.0.0/16"))
    assert policy.ports == ((53, "udp"), (5432, "tcp"))
    assert decode_policy(policy_key("db-in"), encode(policy)) == policy
    assert not policy.log and validate_policy(**dict(policy.to_json(), log=True)).log
    older = {k: v for k, v in policy.to_json().items() if k != "log"}  # stored before `log`
    assert decode_policy(policy_key("db-in"), json.dumps(older).encode()) == policy
    with pytest.raises(MalformedRecord):
        decode_policy(policy_key("other"), encode(policy))
    cases = {"select": dict(select="nolabel"), "allow[1]": dict(allow=["app=web", "10.0.0/x"]),
             "direction": dict(direction="sideways"), "ports[0]": dict(ports=["99999/tcp"]),
             "allow": dict(allow=[]), "log": dict(log="yes")}
    for field_name, change in cases.items():
        given = dict(name="p", network="blue", direction="ingress", select="app=db",
                     allow=["app=web"]) | change
        with pytest.raises(InvalidPolicy, match=f"policy {field_name.replace('[', '.')}"):
            validate_policy(**given)  # type: ignore[arg-type]


DB = PolicyRule("db-in", "blue", False, ("app", "db"), (("app", "web"),), ("10.9.0.0/16",),
                ((5432, "tcp"),))
WEB_OUT = PolicyRule("web-out", "blue", True, ("app", "web"), (("app", "db"),))
ENDPOINTS = [PolicyEndpoint("blue", "10.0.0.2", (("app", "db"),), True),
             PolicyEndpoint("blue", "10.0.0.3", (("app", "web"),), False),
             PolicyEndpoint("red", "10.1.0.3", (("app", "web"),), False)]


def test_sets_hold_local_selected_and_every_labelled_peer_of_the_network() -> None:
    plan = plan_policy([DB], ENDPOINTS)
    filled = {name: addresses for name, addresses in plan.sets.items()
              if addresses and "_selected_" not in name}
    assert sorted(filled.values(), key=sorted) == [frozenset({"10.0.0.2"}),
                                                   frozenset({"10.0.0.3"})]
    assert "meta l4proto tcp th dport { 5432 } accept" in plan.chains
    assert "ip saddr { 10.9.0.0/16 }" in plan.chains
    ingress = plan.chains[plan.chains.index("chain ingress"):]
    # every allow, then the policy's count, then the deny
    assert ingress.rindex("accept") < ingress.index(f"counter name {plan.counters['db-in']}") \
        < ingress.index("drop")
    assert "log" not in plan.chains


def test_each_policy_selecting_a_denied_packet_counts_it_and_a_logged_one_logs_it() -> None:
    also_db = PolicyRule("db-admin", "blue", False, ("app", "db"), (("app", "admin"),),
                         log=True)
    plan = plan_policy([DB, also_db], ENDPOINTS)
    assert plan.counters["db-in"] != plan.counters["db-admin"]
    lines = [line.strip() for line in plan.chains.splitlines()]
    counts = {name: [i for i, line in enumerate(lines) if f"counter name {counter}" in line]
              for name, counter in plan.counters.items()}
    drops = [i for i, line in enumerate(lines) if line.endswith(" drop")]
    accepts = [i for i, line in enumerate(lines) if line.endswith(" accept")]
    assert len(drops) == 2  # one per selected set (IPv4, IPv6): both policies share it
    for name in ("db-in", "db-admin"):  # neither counts and drops: each counts, then one drops
        assert len(counts[name]) == 2 and max(accepts) < min(counts[name])
        assert max(counts[name]) < min(drops)
        assert all("drop" not in lines[i] for i in counts[name])
    logged = [lines[i] for i in counts["db-admin"]]
    assert all(f'log prefix "{LOG_PREFIX}db-admin " group {LOG_GROUP}' in line
               and f"limit rate {LOG_RATE}" in line for line in logged)
    assert all("log" not in lines[i] for i in counts["db-in"])


def test_the_policy_view_keeps_the_last_good_copy_and_reports_the_bad_value() -> None:
    view = PolicyView()
    good = validate_policy(name="db-in", network="blue", direction="ingress", select="app=db",
                           allow=["app=web"], log=True)
    assert view.replace([(policy_key("db-in"), encode(good))], 5) == [RecordAdded(good)]
    assert view.policies == {"db-in": good} and (view.listed, view.version) == (True, 1)
    assert view.apply([KeyChange(policy_key("db-in"), b'{"name": "db-in"}', 6)]) == []
    assert view.policies == {"db-in": good} and view.rejected == {policy_key("db-in")}
    assert [m.key for m in view.malformed] == [policy_key("db-in")]
    assert view.apply([KeyChange(policy_key("db-in"), None, 7)]) == [RecordRemoved("db-in")]
    assert (view.policies, view.revision, view.version) == ({}, 7, 2)


def test_an_endpoint_change_only_changes_elements_and_a_policy_change_the_rules() -> None:
    before = plan_policy([DB, WEB_OUT], ENDPOINTS)
    arrived = plan_policy([DB, WEB_OUT], [*ENDPOINTS, PolicyEndpoint(
        "blue", "10.0.0.9", (("app", "db"),), True)])
    script = policy_transaction(before, arrived)
    assert script is not None and "chain" not in script
    # selected, peer, and the union of the direction's selected sets
    assert script.count("add element") == 3 and "10.0.0.9" in script
    assert policy_transaction(arrived, arrived) is None
    back = policy_transaction(arrived, before)
    assert back is not None and back.count("delete element") == 3
    fewer = policy_transaction(before, plan_policy([DB], ENDPOINTS))
    assert fewer is not None and "flush chain" in fewer and "delete counter" in fewer
    assert "delete table" not in fewer  # kept policies keep their counters
    fresh = policy_transaction(None, before)
    assert fresh is not None and fresh.startswith("table inet vxmesh_policy { }\ndelete table")


def test_unselected_traffic_leaves_each_chain_after_one_lookup() -> None:
    also_db = PolicyRule("db-admin", "blue", False, ("tier", "data"), (("app", "admin"),))
    endpoints = [*ENDPOINTS, PolicyEndpoint("blue", "10.0.0.4", (("tier", "data"),), True),
                 PolicyEndpoint("blue", "fd00::5", (("app", "web"),), True)]
    plan = plan_policy([DB, also_db, WEB_OUT], endpoints)
    # the union of every ingress policy's selected endpoints, and of the egress ones
    assert plan.sets["ingress_selected_4"] == {"10.0.0.2", "10.0.0.4"}
    assert plan.sets["ingress_selected_6"] == frozenset()
    assert plan.sets["egress_selected_4"] == frozenset()  # 10.0.0.3 is not ours
    assert plan.sets["egress_selected_6"] == {"fd00::5"}
    for chain, own in (("ingress", "daddr"), ("egress", "saddr")):
        body = plan.chains[plan.chains.index(f"chain {chain}"):]
        lines = [line.strip() for line in body.splitlines()[1:]]
        assert lines[:2] == [f"ip {own} != @{chain}_selected_4 return",
                             f"ip6 {own} != @{chain}_selected_6 return"]
    assert "egress_selected" not in plan_policy([DB], ENDPOINTS).rules  # no egress policy
