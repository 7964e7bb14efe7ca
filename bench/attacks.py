"""Forged gossip against a lab of real agents: does any honest node's view or kernel move?

Usage: bench/attacks.py [--settle SECONDS] [--no-baseline] [--json]

Builds a 3-host lab (`agent.lab.hosts.Lab`, its own directory and prefix; removed at the end
even on failure) with one overlay network and one endpoint per host, plus an attacker
namespace on the same underlay bridge holding two addresses: 10.77.0.66 (the attacker) and
10.77.0.67 (a third-party victim whose received bytes measure amplification). Every attack is
sent from the attacker namespace (by this script re-run there with `--sender`), in three
configurations of the same lab, all agents restarted between them:

  encrypted: the defaults (gossip.encrypt and gossip.sign on). The attacker holds the
             cluster's AES key (an insider: a key holder must still not speak for a node);
  plain:     gossip.encrypt = false, signing on; the attacker sends plaintext;
  baseline:  gossip.encrypt = false and gossip.sign = false: what an unauthenticated
             cluster accepts (for comparison; not counted in `hijacked`).

Attacks: alive claims at the incarnation limit and within the bound (another node's name,
the attacker's address and VTEP), dead claims at the limit, a forged graceful leave, a forged
failure (unsigned by design: the victim must refute it), a table record at the version limit
(then a fresh endpoint must still propagate), forged table records in another owner's name
with the attacker's VTEP, records with a multicast MAC or a gateway / outside-subnet address,
a new node name at another node's address, a push-pull stream of 40 chunks of fake members,
idle TCP connections held while a host rejoins, a 1,384-byte datagram of indirect pings
naming the victim, pings and relayed pings sent with the victim's source address, and (with
encryption) one sealed packet replayed ten times. Plain text also checks whether push-pull
still hands state to a stranger (`state_leak`, reported, not a hijack).

After each attack every host's view is polled (members: name, address, state, VTEP;
endpoints: IP, MAC, owner, VTEP; kernel: permanent neighbours and FDB destinations) against
the snapshot taken before it. An attack that moved a view is "recovered" when all views are
back, and "hijacked" if any is still wrong after `--settle` seconds (15). Amplification =
bytes the victim received / bytes the attacker sent.

JSON last line: `attacks` (count, vxmesh configurations), `hijacked` (must be 0),
`recovered_s_max`, `amplification_max` (must be <= 2), `signed_verify_us_p50` (Ed25519 verify
of an alive claim, in-process), `signed_sign_us_p50`, `baseline_hijacked`, `runs` (every
result). Run it alone: `flock /work/bench.lock .venv/bin/python bench/attacks.py --json`.

May import: agent, gossip, overlay, the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from underlay.netns_exec import ip_netns_exec

ATTACKER = "10.77.0.66"
VICTIM = "10.77.0.67"
PORT = 7946
NETWORK = "atk"
SUBNET = "10.217.0.0/16"
GATEWAY = "10.217.0.1"  # the default: the subnet's first address
CONFIGS: dict[str, dict[str, str]] = {
    "encrypted": {},
    "plain": {"VXMESH_GOSSIP_ENCRYPT": "false"},
    "baseline": {"VXMESH_GOSSIP_ENCRYPT": "false", "VXMESH_GOSSIP_SIGN": "false"},
}


@dataclass
class Result:
    config: str
    attack: str
    disturbed: bool  # some honest view moved at some point
    hijacked: bool  # some honest view still wrong after the settle time
    recovered_s: float | None  # attack to every view back (0 if never moved)
    amplification: float | None
    note: str = ""


# -- the sender, run inside the attacker namespace --------------------------------------------


def run_sender() -> int:
    """Read a plan (JSON) on stdin, send it, report what the victim address received."""
    plan = json.load(sys.stdin)
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind((VICTIM, PORT))
    victim.settimeout(0.05)
    sockets = {(VICTIM, PORT): victim}
    sent = 0
    for item in plan.get("udp", []):
        src = tuple(item["src"])
        sock = sockets.get(src)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(src)
            sockets[src] = sock
        data = bytes.fromhex(item["hex"])
        for _ in range(item.get("repeat", 1)):
            sock.sendto(data, tuple(item["dst"]))
            sent += len(data)
    streams = []
    for item in plan.get("tcp", []):
        for _ in range(item.get("count", 1)):
            stream = socket.create_connection(tuple(item["dst"]), timeout=5)
            if item.get("hex"):
                with contextlib.suppress(OSError):  # the agent may cut the stream short
                    stream.sendall(bytes.fromhex(item["hex"]))
            streams.append((stream, item.get("read", False)))
    answered = 0
    for stream, read in streams:
        if read:
            stream.settimeout(3)
            try:
                while chunk := stream.recv(65536):
                    answered += len(chunk)
            except OSError:
                pass
    received = 0
    deadline = time.monotonic() + plan.get("listen_s", 1.5)
    while time.monotonic() < deadline:
        try:
            data, _ = victim.recvfrom(65536)
        except TimeoutError:
            continue
        received += len(data)
    hold = plan.get("hold_s", 0.0)
    if hold:
        time.sleep(hold)
    for stream, _ in streams:
        stream.close()
    print(json.dumps({"sent": sent, "victim_bytes": received, "tcp_answered": answered}))
    return 0


# -- the bench -------------------------------------------------------------------------------


def signing_cost() -> tuple[float, float]:
    """Median µs of signing and of verifying one alive claim (Ed25519), in-process."""
    from gossip.identity import Signer, verify
    from gossip.wire import alive_signed_bytes

    signer = Signer.generate()
    data = alive_signed_bytes(7, "node-1", ("10.0.0.1", 7946), b'{"v":1,"vtep":"10.0.0.1"}',
                              signer.public_key)
    signs, verifies = [], []
    for _ in range(2000):
        start = time.perf_counter()
        signature = signer.sign(data)
        signs.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert verify(signer.public_key, signature, data)
        verifies.append(time.perf_counter() - start)
    return statistics.median(signs) * 1e6, statistics.median(verifies) * 1e6


class AttackBench:
    def __init__(self, directory: Path, settle_s: float) -> None:
        from agent.lab.hosts import Lab

        self.prefix = f"x14{os.getpid() % 1000}"
        self.lab = Lab(directory / "lab", prefix=self.prefix)
        self.attacker_ns = f"{self.prefix}atk"
        self.settle_s = settle_s
        self.state: Any = None
        self.config = "encrypted"
        self.key: bytes | None = None

    # -- set-up -----------------------------------------------------------------------------

    def build(self) -> None:
        import base64

        self.state = state = self.lab.up(3)
        self.key = base64.b64decode(state.key)
        self.lab.client(state.hosts[0]).request(
            "POST", "/v1/networks", {"name": NETWORK, "subnet": SUBNET})
        for host in state.hosts:
            self.lab.client(host).request("POST", "/v1/endpoints",
                                          {"name": f"ep-{host.name}", "network": NETWORK})
        ns, sw = self.attacker_ns, state.switch
        port = f"pa{os.getpid() % 1000}"
        for argv in (["ip", "netns", "add", ns],
                     ["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name",
                      "eth0", "netns", ns],
                     ["ip", "-n", sw, "link", "set", port, "master", "br0", "up"],
                     ["ip", "-n", ns, "addr", "add", f"{ATTACKER}/24", "dev", "eth0"],
                     ["ip", "-n", ns, "addr", "add", f"{VICTIM}/24", "dev", "eth0"],
                     ["ip", "-n", ns, "link", "set", "eth0", "up"],
                     ["ip", "-n", ns, "link", "set", "lo", "up"]):
            subprocess.run(argv, check=True, timeout=10)
        self.wait_views_complete()

    def teardown(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.attacker_ns], timeout=10,
                       capture_output=True)
        self.lab.down()

    def use(self, config: str) -> None:
        """Restart every agent with `config`'s settings, then wait for complete views."""
        state = self.state
        for host in state.hosts:
            self.lab.stop_agent(state, host)
        for host in state.hosts:
            self.lab.start_agent(state, host, dict(CONFIGS[config]))
        self.lab.wait_converged(state, 60)
        self.config = config
        self.wait_views_complete()

    def wait_views_complete(self) -> None:
        self.lab.wait_for(lambda: all(len(self.view(h)["endpoints"]) == 3
                                      and len(self.view(h)["fdb"]) >= 2
                                      for h in self.state.hosts),
                          "every host to hold every endpoint", 60)

    # -- views ------------------------------------------------------------------------------

    def view(self, host: Any) -> dict[str, Any]:
        client = self.lab.client(host, 5)
        members = sorted((m["name"], m["address"], m["state"], m.get("vtep"))
                         for m in client.request("GET", "/v1/members"))
        endpoints = sorted((e["ip"], e["mac"], e["node"], e["vtep"])
                           for e in client.request("GET", "/v1/endpoints")
                           if e.get("mode") == "overlay")
        neigh = subprocess.run(["ip", "-n", host.netns, "neigh", "show", "nud", "permanent"],
                               capture_output=True, text=True, timeout=10).stdout
        fdb = subprocess.run(ip_netns_exec(host.netns, ["bridge", "fdb", "show"]),
                             capture_output=True, text=True, timeout=10).stdout
        return {"members": members, "endpoints": endpoints,
                "neigh": sorted(line for line in neigh.splitlines() if "lladdr" in line),
                "fdb": sorted(line for line in fdb.splitlines() if " dst " in line)}

    def views(self) -> list[dict[str, Any]]:
        return [self.view(h) for h in self.state.hosts]

    # -- running one attack ------------------------------------------------------------------

    def send(self, plan: dict[str, Any]) -> dict[str, Any]:
        done = subprocess.run(
            ip_netns_exec(self.attacker_ns, [sys.executable, str(Path(__file__)), "--sender"]),
            input=json.dumps(plan), capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"sender failed: {done.stderr.strip()[-400:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def attack(self, name: str, plan: Callable[[], dict[str, Any]], *,
               amplification: bool = False,
               check: Callable[[], str] | None = None) -> Result:
        before = self.views()
        start = time.monotonic()
        report = self.send(plan())
        disturbed, last_wrong = False, None
        deadline = start + self.settle_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.views() != before:
                disturbed, last_wrong = True, time.monotonic()
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 3.0:
                break
            time.sleep(0.1)
        hijacked = self.views() != before
        note = check() if check is not None else ""
        if note.startswith("FAIL"):
            hijacked = True
        recovered = None if hijacked else (
            0.0 if last_wrong is None else round(last_wrong - start, 2))
        amp = None
        if amplification and report["sent"]:
            amp = round(report["victim_bytes"] / report["sent"], 2)
        if report.get("tcp_answered"):
            note = (note + f" stranger got {report['tcp_answered']} bytes of state").strip()
        result = Result(self.config, name, disturbed, hijacked, recovered, amp, note)
        print(f"  {self.config:<9} {name:<26} {'HIJACKED' if hijacked else 'held':<8} "
              f"recovered {recovered!s:>5} s  amplification {amp!s:>5}  {note}",
              file=sys.stderr, flush=True)
        if hijacked:  # put the lab back for the next attack
            self.use(self.config)
        return result

    # -- the attacks ------------------------------------------------------------------------

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in self.lab.client(self.state.hosts[0]).request(
            "GET", "/v1/members")}

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return {e["node"]: e for e in self.lab.client(self.state.hosts[0]).request(
            "GET", "/v1/endpoints") if e.get("mode") == "overlay"}

    def packet(self, messages: list[Any]) -> bytes:
        from gossip.keyring import Keyring
        from gossip.wire import encode_message, encode_packet

        data = encode_packet([encode_message(m) for m in messages])
        if self.config == "encrypted":
            assert self.key is not None
            data = Keyring([self.key], self.key, clock=time.time).seal(data)
        return data

    def udp(self, data: bytes, *, to: list[Any], src: str = ATTACKER,
            repeat: int = 1, listen_s: float = 1.5) -> dict[str, Any]:
        return {"udp": [{"src": [src, PORT], "dst": [h.address, PORT], "hex": data.hex(),
                         "repeat": repeat} for h in to], "listen_s": listen_s}

    def table_packet(self, records: list[Any]) -> bytes:
        from gossip.wire import UserMessage
        from overlay.dissemination import encode_record

        return self.packet([UserMessage(encode_record(r, 0.0)) for r in records])

    def run_all(self) -> list[Result]:
        from agent.runtime.gossip_link import encode_meta
        from gossip.transport import CHUNK, END, HELLO, encode_frame
        from gossip.wire import (
            Alive,
            Dead,
            IndirectPing,
            MemberRecord,
            MemberState,
            Ping,
            encode_member_record,
            encode_members_chunk,
        )
        from overlay.table import VERSION_MAX, Entry, Membership

        h1, h2, h3 = self.state.hosts
        n1, n2, n3 = (h.node or h.name for h in (h1, h2, h3))
        evil_meta = encode_meta(ATTACKER)
        members = self.members()
        inc2, inc3 = members[n2]["incarnation"], members[n3]["incarnation"]
        ep2 = self.endpoints()[n2]
        rng = random.Random(14)

        def mac() -> str:
            return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))

        def fresh_endpoint_propagates() -> str:
            client = self.lab.client(h1)
            created = client.request("POST", "/v1/endpoints", {"name": "probe",
                                                               "network": NETWORK})
            try:
                self.lab.wait_for(lambda: all(
                    created["ip"] in {e["ip"] for e in self.lab.client(h).request(
                        "GET", "/v1/endpoints")} for h in (h2, h3)),
                    "a fresh endpoint to reach h2 and h3", 15)
                outcome = "fresh endpoint propagated"
            except Exception:
                outcome = "FAIL: a fresh endpoint did not propagate"
            client.request("DELETE", "/v1/endpoints/probe")
            self.wait_views_complete()
            time.sleep(1.0)
            return outcome

        def h1_members_intact() -> str:
            names = set(self.members())
            return "no fake member" if names == {n1, n2, n3} else \
                f"FAIL: h1 holds {len(names)} members"

        def rejoin_under_idle_connections() -> str:
            self.lab.stop_agent(self.state, h3)
            self.lab.start_agent(self.state, h3, dict(CONFIGS[self.config]))
            start = time.monotonic()
            try:
                self.lab.wait_converged(self.state, 30)
                self.wait_views_complete()
            except Exception:
                return "FAIL: h3 did not rejoin"
            return f"h3 rejoined in {time.monotonic() - start:.1f} s"

        fake_records = [encode_member_record(MemberRecord(
            f"fake-{i}", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", PORT), b"", 0,
            MemberState.ALIVE)) for i in range(60_000)]
        flood = (encode_frame(HELLO, b"\x00" + os.urandom(8), self.keyring())
                 + b"".join(encode_frame(CHUNK, encode_members_chunk(
                     fake_records[i * 1500:(i + 1) * 1500]), self.keyring())
                            for i in range(40))
                 + encode_frame(END, (40).to_bytes(4, "big"), self.keyring()))
        indirect_flood = self.packet([IndirectPing(i, n2, (VICTIM, PORT), True)
                                      for i in range(46)])
        results = [
            self.attack("alive_incarnation_limit", lambda: self.udp(self.packet(
                [Alive(2**64 - 1, n2, (ATTACKER, PORT), evil_meta)]), to=[h1, h3])),
            self.attack("alive_within_bound", lambda: self.udp(self.packet(
                [Alive(inc2 + 1000, n2, (ATTACKER, PORT), evil_meta)]), to=[h1, h3])),
            self.attack("dead_incarnation_limit", lambda: self.udp(self.packet(
                [Dead(2**64 - 1, n3, "x"), Dead(2**64 - 1, n3, n3)]), to=[h1])),
            self.attack("forged_leave", lambda: self.udp(self.packet(
                [Dead(inc3 + 1, n3, n3)]), to=[h1, h2])),
            self.attack("forged_failure", lambda: self.udp(self.packet(
                [Dead(self.members()[n3]["incarnation"] + 1, n3, "x")]), to=[h1])),
            self.attack("table_version_limit", lambda: self.udp(self.table_packet(
                [Entry(NETWORK, "10.217.200.1", mac(), n2, h2.address, VERSION_MAX)]),
                to=[h1, h3]), check=fresh_endpoint_propagates),
            self.attack("table_forged_owner", lambda: self.udp(self.table_packet(
                [Entry(NETWORK, ep2["ip"], mac(), n2, ATTACKER, 10**6),
                 Membership(NETWORK, n2, ATTACKER, 10**6),
                 Entry(NETWORK, "10.217.200.2", mac(), "mallory", ATTACKER, 10**6),
                 Membership(NETWORK, "mallory", ATTACKER, 10**6)]), to=[h1, h3])),
            self.attack("table_bad_mac_and_address", lambda: self.udp(self.table_packet(
                [Entry(NETWORK, "10.217.200.3", "01:00:5e:00:00:01", n2, h2.address, 10**6),
                 Entry(NETWORK, GATEWAY, mac(), n2, h2.address, 10**6 + 1),
                 Entry(NETWORK, "192.168.1.1", mac(), n2, h2.address, 10**6 + 2)]),
                to=[h1, h3])),
            self.attack("new_name_on_old_address", lambda: self.udp(self.packet(
                [Alive(0, "mallory", (h2.address, PORT), encode_meta(h2.address))]),
                to=[h1, h3])),
            self.attack("push_pull_member_flood", lambda: {"tcp": [
                {"dst": [h1.address, PORT], "hex": flood.hex()}], "listen_s": 2.0},
                check=h1_members_intact),
            self.attack("idle_connections", lambda: {"tcp": [
                {"dst": [h1.address, PORT], "count": 20}], "listen_s": 0.1},
                check=rejoin_under_idle_connections),
            self.attack("indirect_ping_flood", lambda: self.udp(indirect_flood, to=[h1]),
                        amplification=True),
            self.attack("ping_reflection", lambda: self.udp(self.packet(
                [Ping(i, n1) for i in range(3)]), to=[h1], src=VICTIM, repeat=20),
                amplification=True),
            self.attack("relay_reflection", lambda: self.udp(self.packet(
                [IndirectPing(7, n2, (h2.address, PORT), True)]), to=[h1], src=VICTIM,
                repeat=20), amplification=True),
        ]
        if self.config == "encrypted":
            captured = self.packet([Ping(99, n1)])
            results.append(self.attack("sealed_replay", lambda: self.udp(
                captured, to=[h1], src=VICTIM, repeat=10), amplification=True))
        else:
            results.append(self.attack("push_pull_state_read", lambda: {"tcp": [
                {"dst": [h1.address, PORT], "read": True,
                 "hex": (encode_frame(HELLO, b"\x00" + os.urandom(8), None)
                         + encode_frame(END, (0).to_bytes(4, "big"), None)).hex()}],
                "listen_s": 0.1}))
        return results

    def keyring(self) -> Any:
        from gossip.keyring import Keyring

        if self.config != "encrypted":
            return None
        assert self.key is not None
        return Keyring([self.key], self.key, clock=time.time)


def run(settle_s: float, baseline: bool) -> list[Result]:
    directory = Path(tempfile.mkdtemp(prefix="vxmesh-bench-attacks-"))
    bench = AttackBench(directory, settle_s)
    results: list[Result] = []
    try:
        bench.build()
        for config in ["encrypted", "plain", *(["baseline"] if baseline else [])]:
            print(f"configuration {config}", file=sys.stderr, flush=True)
            if config != "encrypted":
                bench.use(config)
            results += bench.run_all()
    finally:
        bench.teardown()
    return results


def summarize(results: list[Result], sign_us: float, verify_us: float) -> dict[str, Any]:
    ours = [r for r in results if r.config != "baseline"]
    recovered = [r.recovered_s for r in ours if r.recovered_s is not None]
    amplification = [r.amplification for r in ours if r.amplification is not None]
    return {
        "attacks": len(ours),
        "hijacked": sum(r.hijacked for r in ours),
        "recovered_s_max": max(recovered) if recovered else None,
        "amplification_max": max(amplification) if amplification else None,
        "signed_verify_us_p50": round(verify_us, 1),
        "signed_sign_us_p50": round(sign_us, 1),
        "baseline_hijacked": sum(r.hijacked for r in results if r.config == "baseline"),
        "baseline_disturbed": sum(r.disturbed for r in results if r.config == "baseline"),
        "runs": [asdict(r) for r in results],
    }


def format_table(results: list[Result]) -> str:
    configs = list(dict.fromkeys(r.config for r in results))
    attacks = list(dict.fromkeys(r.attack for r in results))
    head = f"{'attack':<28}" + "".join(f"{c:>24}" for c in configs)
    lines = [head, "-" * len(head)]
    for attack in attacks:
        cells = []
        for config in configs:
            r = next((x for x in results if x.config == config and x.attack == attack), None)
            if r is None:
                cells.append("-")
                continue
            cell = "HIJACKED" if r.hijacked else ("moved" if r.disturbed else "held")
            if r.recovered_s:
                cell += f" {r.recovered_s:.1f}s"
            if r.amplification is not None:
                cell += f" x{r.amplification:.2f}"
            cells.append(cell)
        lines.append(f"{attack:<28}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/attacks.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds a view may take to recover before it counts as hijacked")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unauthenticated baseline configuration")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sender:
        return run_sender()
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces)")
    sign_us, verify_us = signing_cost()
    results = run(args.settle, not args.no_baseline)
    print(format_table(results))
    summary = summarize(results, sign_us, verify_us)
    print(f"hijacked {summary['hijacked']} of {summary['attacks']} (baseline: "
          f"{summary['baseline_hijacked']}); recovered within {summary['recovered_s_max']} s; "
          f"amplification at most {summary['amplification_max']}; Ed25519 verify "
          f"{verify_us:.0f} us, sign {sign_us:.0f} us")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0 if summary["hijacked"] == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
