"""Request bodies exactly as Docker 20.10.24 (Debian's docker.io) sent them to a plugin.

Captured from a real dockerd in a network namespace running `docker network create -d vxmesh
--ipam-driver vxmesh --subnet 10.99.0.0/24 blue`, `docker run -d --name web --network blue
-p 8080:80 ...`, `docker run --rm --network blue --ip 10.99.0.9 ...`, `docker rm -f web`,
`docker network rm blue`, and a network create with `--gateway`, `--ip-range`, `--aux-address`,
`-o`: (path, body) in the order Docker sent them. `None` is a call without a body.
"""

from __future__ import annotations

from typing import Any

NET = "af339ee6cef882d68a8d969616be03d639c00bfb09080d6f503fc55b0d99bc6b"
WEB = "d676a86d31704667ef1c82f96f197f72ec627f950e211fc09c959cdd053c60ad"
ONE = "b234e70c0be754598f8593881ada85fb464e177a158b4c4d6cbcc499199a58ad"
POOL = "vxmesh/10.99.0.0/24"
PORTS: dict[str, Any] = {
    "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
    "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                    "HostPort": 8080, "HostPortEnd": 8080}]}
NO_PORTS: dict[str, Any] = {"com.docker.network.endpoint.exposedports": [],
                            "com.docker.network.portmap": []}

# The whole life of a network with two containers, in Docker's order.
LIFE: list[tuple[str, Any]] = [
    ("Plugin.Activate", None),
    ("NetworkDriver.GetCapabilities", None),
    ("IpamDriver.GetCapabilities", None),
    ("IpamDriver.GetDefaultAddressSpaces", None),
    ("IpamDriver.RequestPool", {"AddressSpace": "vxmesh", "Pool": "10.99.0.0/24", "SubPool": "",
                                "Options": {}, "V6": False}),
    ("IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "",
                                   "Options": {"RequestAddressType":
                                               "com.docker.network.gateway"}}),
    ("NetworkDriver.CreateNetwork", {
        "NetworkID": NET,
        "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
        "IPv4Data": [{"AddressSpace": "vxmesh", "Gateway": "10.99.0.1/24",
                      "Pool": "10.99.0.0/24"}],
        "IPv6Data": []}),
    ("IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "", "Options": None}),
    ("NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": WEB,
        "Interface": {"Address": "10.99.0.2/24", "AddressIPv6": "", "MacAddress": ""},
        "Options": PORTS}),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": WEB,
                            "SandboxKey": "/var/run/docker/netns/e47b1fd51aa3",
                            "Options": PORTS}),
    ("IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "10.99.0.9", "Options": None}),
    ("NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": ONE,
        "Interface": {"Address": "10.99.0.9/24", "AddressIPv6": "", "MacAddress": ""},
        "Options": NO_PORTS}),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": ONE,
                            "SandboxKey": "/var/run/docker/netns/058ca43abbaa",
                            "Options": NO_PORTS}),
    ("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": ONE}),
    ("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": ONE}),
    ("IpamDriver.ReleaseAddress", {"PoolID": POOL, "Address": "10.99.0.9"}),
    ("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": WEB}),
    ("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": WEB}),
    ("IpamDriver.ReleaseAddress", {"PoolID": POOL, "Address": "10.99.0.2"}),
    ("IpamDriver.ReleaseAddress", {"PoolID": POOL, "Address": "10.99.0.1"}),
    ("IpamDriver.ReleasePool", {"PoolID": POOL}),
    ("NetworkDriver.DeleteNetwork", {"NetworkID": NET}),
]

GREEN = "9770b6a6aac32144d0c081c82800fbfb2d6eb8e9cbd917db1cc8551d22fc441f"
# `docker network create ... --subnet 10.98.0.0/24 --gateway 10.98.0.254 --ip-range
# 10.98.0.128/25 --aux-address a=10.98.0.100 -o vxmesh.vni=77 -o mtu=1400 --label team=x green`
OPTIONS: list[tuple[str, Any]] = [
    ("IpamDriver.RequestPool", {"AddressSpace": "vxmesh", "Pool": "10.98.0.0/24",
                                "SubPool": "10.98.0.128/25", "Options": {}, "V6": False}),
    ("IpamDriver.RequestAddress", {"PoolID": "vxmesh/10.98.0.0/24", "Address": "10.98.0.254",
                                   "Options": {"RequestAddressType":
                                               "com.docker.network.gateway"}}),
    ("IpamDriver.RequestAddress", {"PoolID": "vxmesh/10.98.0.0/24", "Address": "10.98.0.100",
                                   "Options": None}),
    ("NetworkDriver.CreateNetwork", {
        "NetworkID": GREEN,
        "Options": {"com.docker.network.enable_ipv6": False,
                    "com.docker.network.generic": {"mtu": "1400", "vxmesh.vni": "77"}},
        "IPv4Data": [{"AddressSpace": "vxmesh", "AuxAddresses": {"a": "10.98.0.100/24"},
                      "Gateway": "10.98.0.254/24", "Pool": "10.98.0.0/24"}],
        "IPv6Data": []}),
]
