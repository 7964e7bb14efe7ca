"""The plugin protocol, pure: Docker's golden bodies parse to the right requests, every bad
value is answered with an error naming the field and the value, answers have Docker's shapes,
and the plugin socket's handler routes, counts and maps errors (never 404 for a known call)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from agent.api.errors import Conflict, InvalidRequest, NotFound
from agent.api.http import Request
from agent.docker import protocol as p
from agent.docker.plugin import CALLS, PluginHandler
from tests.docker import golden

BODIES = dict(golden.LIFE)


def test_every_call_of_the_issue_is_routed() -> None:
    wanted = {"Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
              "NetworkDriver.DeleteNetwork", "NetworkDriver.CreateEndpoint",
              "NetworkDriver.EndpointOperInfo", "NetworkDriver.DeleteEndpoint",
              "NetworkDriver.Join", "NetworkDriver.Leave",
              "NetworkDriver.ProgramExternalConnectivity",
              "NetworkDriver.RevokeExternalConnectivity", "IpamDriver.GetCapabilities",
              "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool",
              "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress"}
    assert wanted <= set(CALLS)
    assert {path for path, _ in golden.LIFE} <= set(CALLS)


def test_handshake_answers() -> None:
    assert p.ACTIVATE == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert p.NETWORK_CAPABILITIES == {"Scope": "local", "ConnectivityScope": "global"}
    assert p.DEFAULT_ADDRESS_SPACES["LocalDefaultAddressSpace"] == "vxmesh"


def test_request_pool_golden_and_pool_id_round_trip() -> None:
    request = p.parse_request_pool(BODIES["IpamDriver.RequestPool"])
    assert request.pool == ipaddress.ip_network("10.99.0.0/24") and request.sub_pool is None
    assert not request.v6 and request.options == {}
    answer = p.pool_answer(request.pool)
    assert answer == {"PoolID": "vxmesh/10.99.0.0/24", "Pool": "10.99.0.0/24", "Data": {}}
    assert p.parse_pool_id(answer["PoolID"]) == request.pool


@pytest.mark.parametrize(("body", "message"), [
    ({"AddressSpace": "vxmesh", "Pool": "", "SubPool": "", "V6": False}, "Pool: required"),
    ({"AddressSpace": "vxmesh", "Pool": "", "SubPool": "10.0.0.0/25"}, "SubPool: '10.0.0.0/25'"),
    ({"AddressSpace": "vxmesh", "Pool": "10.99.0.1/24"}, "Pool: '10.99.0.1/24' is not a CIDR"),
    ({"AddressSpace": "vxmesh", "Pool": "banana"}, "Pool: 'banana' is not a CIDR"),
    ({"AddressSpace": "LocalDefault", "Pool": "10.99.0.0/24"}, "AddressSpace: 'LocalDefault'"),
    ({"AddressSpace": "vxmesh", "Pool": "10.99.0.0/24", "SubPool": "10.99.0.128/25"},
     "SubPool: '10.99.0.128/25': --ip-range is not supported"),
    ({"AddressSpace": "vxmesh", "Pool": "10.99.0.0/24", "V6": "yes"}, "V6: 'yes'"),
    ({"AddressSpace": "vxmesh", "Pool": "10.99.0.0/24", "Options": {"a": 1}}, "Options.a: 1"),
    ([1, 2], "body must be a JSON object"),
])
def test_request_pool_refusals_name_field_and_value(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(".", r"\.")):
        p.parse_request_pool(body)


def test_request_address_gateway_container_and_static() -> None:
    gateway = p.parse_request_address(golden.LIFE[5][1])
    assert gateway.gateway and gateway.address is None
    container = p.parse_request_address(golden.LIFE[7][1])
    assert not container.gateway and container.address is None and container.options == {}
    static = p.parse_request_address(BODIES["IpamDriver.RequestAddress"])
    assert static.address == ipaddress.ip_address("10.99.0.9") and not static.gateway
    assert p.address_answer(static.address, static.pool) == {"Address": "10.99.0.9/24",
                                                             "Data": {}}
    with_mac = p.parse_request_address({"PoolID": golden.POOL, "Options": {
        p.MAC_OPTION: "02:42:0A:63:00:09"}})
    assert with_mac.mac == "02:42:0a:63:00:09"


@pytest.mark.parametrize(("body", "message"), [
    ({"Address": ""}, "PoolID: required"),
    ({"PoolID": "default/10.0.0.0/8"}, "PoolID: 'default/10.0.0.0/8' is not a vxmesh pool id"),
    ({"PoolID": golden.POOL, "Address": "10.99.1.9"}, "Address: '10.99.1.9' is outside the pool"),
    ({"PoolID": golden.POOL, "Address": "10.99.0.300"}, "Address: '10.99.0.300' is not an IP"),
    ({"PoolID": golden.POOL, "Options": {"RequestAddressType": "x"}},
     "Options.RequestAddressType: 'x'"),
    ({"PoolID": golden.POOL, "Options": {p.MAC_OPTION: "zz"}}, "macaddress: 'zz'"),
])
def test_request_address_refusals(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace(".", r"\.")):
        p.parse_request_address(body)


def test_release_calls_golden() -> None:
    assert p.parse_release_pool(BODIES["IpamDriver.ReleasePool"]).pool == \
        ipaddress.ip_network("10.99.0.0/24")
    release = p.parse_release_address({"PoolID": golden.POOL, "Address": "10.99.0.9"})
    assert release.address == ipaddress.ip_address("10.99.0.9")
    with pytest.raises(InvalidRequest, match="Address: required"):
        p.parse_release_address({"PoolID": golden.POOL})


def test_create_network_golden_and_options() -> None:
    request = p.parse_create_network(BODIES["NetworkDriver.CreateNetwork"])
    assert request.network_id == golden.NET and not request.enable_ipv6
    assert request.ipv6 == () and request.driver_options == {}
    (data,) = request.ipv4
    assert data.pool == ipaddress.ip_network("10.99.0.0/24")
    assert data.gateway == ipaddress.ip_interface("10.99.0.1/24") and data.aux_addresses == {}
    green = p.parse_create_network(dict(golden.OPTIONS)["NetworkDriver.CreateNetwork"])
    assert green.driver_options == {"mtu": "1400", "vxmesh.vni": "77"}
    assert green.ipv4[0].aux_addresses == {"a": ipaddress.ip_interface("10.98.0.100/24")}
    bare = p.parse_create_network({"NetworkID": golden.NET, "Options": None, "IPv4Data": None})
    assert bare.ipv4 == () and bare.driver_options == {}


@pytest.mark.parametrize(("body", "message"), [
    ({}, "NetworkID: required"),
    ({"NetworkID": "blue"}, "NetworkID: 'blue' is not a Docker id"),
    ({"NetworkID": golden.NET, "IPv4Data": [{"Pool": "10.0.0.0/8", "Gateway": "10.0.0.1"}]},
     r"IPv4Data\[0\]\.Gateway: '10\.0\.0\.1' is not an address with a prefix length"),
    ({"NetworkID": golden.NET, "IPv4Data": [{"Gateway": "10.0.0.1/8"}]},
     r"IPv4Data\[0\]\.Pool: required"),
    ({"NetworkID": golden.NET, "IPv4Data": {"Pool": "10.0.0.0/8"}}, "IPv4Data: .* is not a list"),
    ({"NetworkID": golden.NET, "Options": {"com.docker.network.generic": {"mtu": 1400}}},
     "com.docker.network.generic"),
    ({"NetworkID": golden.NET, "Options": {"com.docker.network.enable_ipv6": "no"}},
     "enable_ipv6: 'no'"),
])
def test_create_network_refusals(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        p.parse_create_network(body)


def test_create_endpoint_golden() -> None:
    request = p.parse_create_endpoint(golden.LIFE[8][1])
    assert request.endpoint_id == golden.WEB and request.mac is None
    assert request.address == ipaddress.ip_interface("10.99.0.2/24")
    assert request.address_v6 is None
    assert request.port_map == (p.PortBinding("tcp", 80, "", 8080, 8080),)
    bare = p.parse_create_endpoint({"NetworkID": golden.NET, "EndpointID": golden.ONE,
                                    "Interface": None, "Options": None})
    assert bare.address is None and bare.port_map == ()
    assert p.endpoint_answer("02:42:0a:63:00:02") == {
        "Interface": {"MacAddress": "02:42:0a:63:00:02"}}
    assert p.endpoint_answer(None) == {"Interface": {}}


@pytest.mark.parametrize(("body", "message"), [
    ({"NetworkID": golden.NET}, "EndpointID: required"),
    ({"NetworkID": golden.NET, "EndpointID": golden.ONE, "Interface": {"Address": "10.99.0.9"}},
     r"Interface\.Address: '10\.99\.0\.9' is not an address with a prefix length"),
    ({"NetworkID": golden.NET, "EndpointID": golden.ONE, "Interface": {"MacAddress": "02:42"}},
     r"Interface\.MacAddress: '02:42' is not a MAC"),
    ({"NetworkID": golden.NET, "EndpointID": golden.ONE,
      "Options": {p.PORT_MAP_OPTION: [{"Proto": 6, "Port": 80, "HostPort": 70000}]}},
     r"portmap\[0\]\.HostPort: 70000 is not a port"),
    ({"NetworkID": golden.NET, "EndpointID": golden.ONE,
      "Options": {p.PORT_MAP_OPTION: [{"Proto": 1, "Port": 80}]}}, r"portmap\[0\]\.Proto: 1"),
])
def test_create_endpoint_refusals(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        p.parse_create_endpoint(body)


def test_join_golden_and_answer() -> None:
    request = p.parse_join(golden.LIFE[9][1])
    assert request.sandbox_key == "/var/run/docker/netns/e47b1fd51aa3"
    assert request.options == golden.PORTS
    assert p.join_answer(p.JoinAnswer("vxdk0123456789")) == {
        "InterfaceName": {"SrcName": "vxdk0123456789", "DstPrefix": "eth"}}
    routed = p.join_answer(p.JoinAnswer("x", "10.99.0.1", (
        p.StaticRoute("10.0.0.0/8", "10.99.0.1"), p.StaticRoute("10.1.0.0/16", None))))
    assert routed["Gateway"] == "10.99.0.1"
    assert routed["StaticRoutes"] == [
        {"Destination": "10.0.0.0/8", "RouteType": 0, "NextHop": "10.99.0.1"},
        {"Destination": "10.1.0.0/16", "RouteType": 1}]
    with pytest.raises(InvalidRequest, match="SandboxKey: required"):
        p.parse_join({"NetworkID": golden.NET, "EndpointID": golden.ONE})
    with pytest.raises(InvalidRequest, match="SandboxKey: 'netns' is not an absolute path"):
        p.parse_join({"NetworkID": golden.NET, "EndpointID": golden.ONE, "SandboxKey": "netns"})


def test_endpoint_refs_golden() -> None:
    for call in ("Leave", "DeleteEndpoint"):
        ref = p.parse_endpoint_ref(BODIES[f"NetworkDriver.{call}"], call)
        assert (ref.network_id, ref.endpoint_id) == (golden.NET, golden.WEB)
    external = p.parse_external_connectivity({"NetworkID": golden.NET, "EndpointID": golden.WEB,
                                              "Options": golden.PORTS})
    assert external.port_map[0].host_port == 8080


# -- the socket's handler ---------------------------------------------------------------------

@dataclass
class RecordingDriver:
    """Answers like a driver and records what it was asked (the translation under test)."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    refuse: Exception | None = None

    def _note(self, name: str, request: Any) -> None:
        self.calls.append((name, request))
        if self.refuse is not None:
            raise self.refuse

    async def request_pool(self, request: p.PoolRequest) -> p.IPNetwork:
        self._note("request_pool", request)
        assert request.pool is not None
        return request.pool

    async def release_pool(self, request: p.PoolRelease) -> None:
        self._note("release_pool", request)

    async def request_address(self, request: p.AddressRequest) -> p.IPAddress:
        self._note("request_address", request)
        return request.address or request.pool.network_address + (1 if request.gateway else 2)

    async def release_address(self, request: p.AddressRelease) -> None:
        self._note("release_address", request)

    async def create_network(self, request: p.NetworkCreate) -> None:
        self._note("create_network", request)

    async def delete_network(self, request: p.NetworkRef) -> None:
        self._note("delete_network", request)

    async def create_endpoint(self, request: p.EndpointCreate) -> str | None:
        self._note("create_endpoint", request)
        return "02:42:0a:63:00:02"

    def endpoint_info(self, request: p.EndpointRef) -> dict[str, Any]:
        self._note("endpoint_info", request)
        return {"vxmesh.network": "blue"}

    async def delete_endpoint(self, request: p.EndpointRef) -> None:
        self._note("delete_endpoint", request)

    async def join(self, request: p.JoinRequest) -> p.JoinAnswer:
        self._note("join", request)
        return p.JoinAnswer("vxdk" + request.endpoint_id[:10])

    async def leave(self, request: p.EndpointRef) -> None:
        self._note("leave", request)

    async def program_external(self, request: p.ExternalConnectivity) -> None:
        self._note("program_external", request)

    async def revoke_external(self, request: p.EndpointRef) -> None:
        self._note("revoke_external", request)


def _post(handler: PluginHandler, path: str, body: Any, method: str = "POST"
          ) -> tuple[int, Any, str]:
    raw = b"" if body is None else json.dumps(body).encode()
    request = Request(method, f"/{path}", {}, {}, raw)
    response = trio.run(handler, request)
    return response.status, json.loads(response.body), response.content_type


def test_docker_life_replayed_in_order() -> None:
    driver = RecordingDriver()
    handler = PluginHandler(driver)
    answers = {}
    for path, body in golden.LIFE:
        status, answer, content_type = _post(handler, path, body)
        assert status == 200, (path, answer)
        assert content_type == p.CONTENT_TYPE
        answers.setdefault(path, answer)
    assert answers["Plugin.Activate"] == p.ACTIVATE
    assert answers["IpamDriver.RequestPool"]["PoolID"] == golden.POOL
    assert answers["IpamDriver.RequestAddress"] == {"Address": "10.99.0.1/24", "Data": {}}
    assert answers["NetworkDriver.CreateEndpoint"] == {
        "Interface": {"MacAddress": "02:42:0a:63:00:02"}}
    assert answers["NetworkDriver.Join"]["InterfaceName"]["DstPrefix"] == "eth"
    assert [name for name, _ in driver.calls] == [
        "request_pool", "request_address", "create_network", "request_address",
        "create_endpoint", "join", "request_address", "create_endpoint", "join", "leave",
        "delete_endpoint", "release_address", "leave", "delete_endpoint", "release_address",
        "release_address", "release_pool", "delete_network"]
    stats = handler.statistics()
    assert stats.calls["NetworkDriver.Join"] == 2 and stats.errors == {}


def test_errors_are_err_bodies_and_never_404_for_known_calls() -> None:
    driver = RecordingDriver(refuse=NotFound("EndpointID: abc is not a vxmesh endpoint"))
    handler = PluginHandler(driver)
    status, answer, _ = _post(handler, "NetworkDriver.Join", golden.LIFE[9][1])
    assert status == 400 and answer == {
        "Err": "vxmesh: EndpointID: abc is not a vxmesh endpoint"}
    driver.refuse = Conflict("Address: 10.99.0.9 is taken by h2/docker-0123")
    status, answer, _ = _post(handler, "IpamDriver.RequestAddress",
                              BODIES["IpamDriver.RequestAddress"])
    assert status == 409 and "10.99.0.9 is taken by h2" in answer["Err"]
    status, answer, _ = _post(handler, "IpamDriver.RequestPool", {"Pool": "nope"})
    assert status == 400 and answer["Err"] == (
        "vxmesh: Pool: 'nope' is not a CIDR network (like 10.10.0.0/16)")
    status, answer, _ = _post(handler, "NetworkDriver.Frobnicate", {})
    assert status == 404 and "NetworkDriver.Join" in answer["Err"]
    status, answer, _ = _post(handler, "Plugin.Activate", None, method="GET")
    assert status == 404
    response = trio.run(handler, Request("POST", "/NetworkDriver.Leave", {}, {}, b"{nope"))
    assert response.status == 400 and "not JSON" in json.loads(response.body)["Err"]
    assert handler.statistics().errors["NetworkDriver.Join"] == 1
