"""Host mode: port claims refused when another endpoint or a live socket holds the port."""

from __future__ import annotations

import pytest

from tests.endpoints.conftest import Site, nsenter
from underlay.endpoints_model import (
    EndpointConflict,
    EndpointSpec,
    Mode,
    PortClaim,
    parse_port_claim,
    parse_port_mapping,
)

pytestmark = pytest.mark.kernel


def claims(*texts: str) -> tuple[PortClaim, ...]:
    return tuple(parse_port_claim(t) for t in texts)


async def test_host_mode_port_conflicts_name_the_holder(site: Site) -> None:
    h1 = site.service(site.config(site.h1, "a"))
    await h1.start()
    web = await h1.create(EndpointSpec("web", Mode.HOST, claims=claims("8080/tcp")))
    looked = await h1.inspect("web")
    assert web.netns is None and looked.ports == ("0.0.0.0:8080/tcp",)
    assert "10.0.0.1/24" in looked.addresses
    # A second host-mode web server on the same port: refused, naming the endpoint.
    for clash in ("8080/tcp", "10.0.0.1:8080/tcp", "[::]:8080/tcp"):
        with pytest.raises(EndpointConflict, match=r"held by endpoint 'web'"):
            await h1.create(EndpointSpec("web2", Mode.HOST, claims=claims(clash)))
    # Same port over UDP, or a specific address next to a specific one, is fine.
    await h1.create(EndpointSpec("dns", Mode.HOST, claims=claims("8080/udp")))
    await h1.create(EndpointSpec("a1", Mode.HOST, claims=claims("10.0.0.1:9000/tcp")))
    await h1.create(EndpointSpec("a2", Mode.HOST, claims=claims("127.0.0.1:9000/tcp")))
    # A bridge endpoint cannot publish a port a host endpoint holds.
    with pytest.raises(EndpointConflict, match="endpoint 'dns'"):
        await h1.create(EndpointSpec("b", Mode.BRIDGE,
                                     publish=(parse_port_mapping("8080:53/udp"),)))

    # A plain listening socket opened in the host namespace, outside any endpoint.
    server = site.serve(nsenter(site.h1), "tcp", "0.0.0.0", 7777)
    with pytest.raises(EndpointConflict, match=rf"pid {server.pid} \(python"):
        await h1.create(EndpointSpec("web3", Mode.HOST, claims=claims("7777/tcp")))
    udp = site.serve(nsenter(site.h1), "udp", "::", 7778)
    with pytest.raises(EndpointConflict, match=rf"bound \(:::7778/udp\) by pid {udp.pid}"):
        await h1.create(EndpointSpec("web4", Mode.HOST, claims=claims("10.0.0.1:7778/udp")))
    with pytest.raises(EndpointConflict, match="overlap"):
        await h1.create(EndpointSpec("web5", Mode.HOST, claims=claims("7000", "10.0.0.1:7000")))
    assert sorted(r.name for r in h1.records()) == ["a1", "a2", "dns", "web"]
    assert h1.statistics().refused == 7

    # Exec runs in the host's namespace; deleting frees the claim.
    assert "10.0.0.1/24" in (await h1.exec("web", ["ip", "-o", "addr"])).stdout
    assert await h1.delete("web")
    await h1.create(EndpointSpec("web2", Mode.HOST, claims=claims("8080/tcp")))
