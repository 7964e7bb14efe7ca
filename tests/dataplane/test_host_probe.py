"""The host prober on a real kernel: ICMP echo to a VTEP is answered by the host's kernel
(no process there), a silent address is not, and the core's verdicts follow."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.namespaces import NetnsLab, run
from underlay.echo import ICMP_ECHO_REPLY, encode_request, parse_reply
from underlay.netns_exec import ip_netns_exec

ROOT = Path(__file__).resolve().parents[2]

# Runs inside host A's namespace: a HostProber on a raw socket bound to A's address, with B
# (a namespace with no process at all) and a silent address as failed members.
PROBER = r"""
import json, sys, trio
from agent.runtime.host_probe import HostProber
from overlay.liveness import HostLiveness, LivenessConfig

async def main(source, alive, silent):
    core = HostLiveness(LivenessConfig(grace=60.0, probe_interval=0.2, host_timeout=1.0))
    seen = []
    def changed():
        while (event := core.next_event()) is not None:
            seen.append([event.name, event.current.value, event.reason])
    prober = HostProber(core, source, on_change=changed)
    async with trio.open_nursery() as nursery:
        await nursery.start(prober.run)
        core.member_failed("b", alive, trio.current_time())
        core.member_failed("ghost", silent, trio.current_time())
        prober.wake()
        await trio.sleep(2.0)
        stats = prober.statistics()
        print(json.dumps({"events": seen, "kept": core.kept(), "sent": stats.sent,
                          "replies": stats.replies}))
        nursery.cancel_scope.cancel()

trio.run(main, *sys.argv[1:])
"""


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    lab = NetnsLab("15p")
    try:
        switch = lab.underlay_bridge()
        a, b = lab.ns("a"), lab.ns("b")
        lab.plug(switch, a, "eth0", ["10.78.15.1/24"])
        lab.plug(switch, b, "eth0", ["10.78.15.2/24"])
        yield a, b
    finally:
        lab.close()


@pytest.mark.kernel
def test_the_kernel_answers_for_a_host_without_agent_and_a_silent_one_is_withdrawn(
        hosts: tuple[str, str]) -> None:
    a, _ = hosts
    done = subprocess.run(ip_netns_exec(a, [sys.executable, "-c", PROBER,
                                            "10.78.15.1", "10.78.15.2", "10.78.15.99"]),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert ["b", "agent down", "host answers"] in report["events"]
    assert ["ghost", "withdrawn", "host silent"] in report["events"]
    assert report["kept"] == {"b": "10.78.15.2"}
    assert report["replies"] >= 5  # B's kept verdict rests on repeated answers


@pytest.mark.kernel
def test_a_host_whose_link_is_down_stops_answering(hosts: tuple[str, str]) -> None:
    a, b = hosts
    run(["ip", "link", "set", "eth0", "down"], netns=b)
    done = subprocess.run(ip_netns_exec(a, [sys.executable, "-c", PROBER,
                                            "10.78.15.1", "10.78.15.2", "10.78.15.99"]),
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    report = json.loads(done.stdout.splitlines()[-1])
    assert ["b", "withdrawn", "host silent"] in report["events"]
    assert report["kept"] == {}


def test_replies_parse_and_garbage_does_not() -> None:
    request = encode_request(0x1234, 7)
    reply = bytes([ICMP_ECHO_REPLY]) + request[1:]
    ip_header = bytes([0x45]) + bytes(19)
    parsed = parse_reply(ip_header + reply)
    assert parsed is not None and (parsed.identifier, parsed.sequence) == (0x1234, 7)
    assert parsed.payload == request[8:]
    assert parse_reply(ip_header + request) is None  # a request is not a reply
    assert parse_reply(b"") is None and parse_reply(b"\x45" + bytes(20)) is None
    v6 = parse_reply(bytes([129, 0, 0, 0, 0, 9, 0, 3]), ipv6=True)
    assert v6 is not None and (v6.identifier, v6.sequence) == (9, 3)
