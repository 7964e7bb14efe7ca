"""Network policy's pure parts: labels (API and wire), the stored policy, the nftables plan."""

from __future__ import annotations

import ipaddress

import pytest

from agent.store.errors import InvalidPolicy
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
    with pytest.raises(MalformedRecord):
        decode_policy(policy_key("other"), encode(policy))
    cases = {"select": dict(select="nolabel"), "allow[1]": dict(allow=["app=web", "10.0.0/x"]),
             "direction": dict(direction="sideways"), "ports[0]": dict(ports=["99999/tcp"]),
             "allow": dict(allow=[])}
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
    filled = {name: addresses for name, addresses in plan.sets.items() if addresses}
    assert sorted(filled.values(), key=sorted) == [frozenset({"10.0.0.2"}),
                                                   frozenset({"10.0.0.3"})]
    assert "meta l4proto tcp th dport { 5432 } accept" in plan.chains
    assert "ip saddr { 10.9.0.0/16 }" in plan.chains
    assert f"counter name {plan.counters['db-in']} drop" in plan.chains
    assert plan.chains.index("accept", plan.chains.index("chain ingress")) \
        < plan.chains.index("drop")  # every allow before the deny


def test_an_endpoint_change_only_changes_elements_and_a_policy_change_the_rules() -> None:
    before = plan_policy([DB, WEB_OUT], ENDPOINTS)
    arrived = plan_policy([DB, WEB_OUT], [*ENDPOINTS, PolicyEndpoint(
        "blue", "10.0.0.9", (("app", "db"),), True)])
    script = policy_transaction(before, arrived)
    assert script is not None and "chain" not in script
    assert script.count("add element") == 2 and "10.0.0.9" in script  # selected and peer
    assert policy_transaction(arrived, arrived) is None
    back = policy_transaction(arrived, before)
    assert back is not None and back.count("delete element") == 2
    fewer = policy_transaction(before, plan_policy([DB], ENDPOINTS))
    assert fewer is not None and "flush chain" in fewer and "delete counter" in fewer
    assert "delete table" not in fewer  # kept policies keep their counters
    fresh = policy_transaction(None, before)
    assert fresh is not None and fresh.startswith("table inet vxmesh_policy { }\ndelete table")
