"""The names a Docker container publishes for one of its endpoints (agent.docker.driver)."""

from __future__ import annotations

from typing import Any

from agent.docker.driver import container_names
from overlay.attributes import MAX_ALIASES

ENDPOINT = "e" * 64


def inspected(networks: dict[str, Any], name: str = "/web") -> dict[str, Any]:
    return {"Id": "c" * 64, "Name": name, "NetworkSettings": {"Networks": networks}}


def test_name_then_aliases_of_the_endpoints_network_only() -> None:
    container = inspected({
        "blue": {"EndpointID": ENDPOINT, "Aliases": ["WWW", "cccccccccccc", "web"]},
        "green": {"EndpointID": "f" * 64, "Aliases": ["green-only"]}})
    assert container_names(container, ENDPOINT) == ("web", "www", "cccccccccccc")


def test_another_containers_endpoint_is_none() -> None:
    assert container_names(inspected({"blue": {"EndpointID": "f" * 64}}), ENDPOINT) is None
    assert container_names({"Names": ["/web"], "NetworkSettings": None}, ENDPOINT) is None


def test_a_list_item_and_names_that_are_no_dns_label() -> None:
    listed = {"Names": ["/my.app"], "NetworkSettings": {"Networks": {
        "blue": {"EndpointID": ENDPOINT, "Aliases": None}}}}
    assert container_names(listed, ENDPOINT) == ()  # "my.app" is not one label
    many = inspected({"blue": {"EndpointID": ENDPOINT,
                               "Aliases": [f"a{i}" for i in range(20)]}})
    names = container_names(many, ENDPOINT)
    assert names is not None and len(names) == MAX_ALIASES and names[0] == "web"
