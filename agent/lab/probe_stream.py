"""A continuous probe stream for the lab: ICMP echoes at a fixed rate, every loss counted.

    python -m agent.lab.probe_stream DESTINATION [--rate 100]   (inside an endpoint namespace)

Sends echo requests to DESTINATION at exactly `--rate` per second (each carries its 64-bit
number; the schedule never drifts, a late send is sent at once) until SIGINT or SIGTERM,
then waits `--drain` seconds for answers in flight. It prints "answering" once the first
answer arrived, and at the end one JSON line: probes sent,
answered, lost, the longest run of consecutive losses in seconds (`longest_outage_s`), and
the rate achieved. The destination's kernel answers; no process is needed there. This is
what the end-to-end tests and bench/restart.py run from before a fault until after recovery
(ping's own -i runs below its nominal rate on a loaded machine).

Rules: a reply counts once, matched by our identifier and its number; anything else on the
raw socket is ignored. Needs root (a raw ICMP socket). IPv4 destinations. `ProbeStream` runs
one in a namespace from Python (nsenter, so SIGINT reaches the stream itself).

May import: underlay.echo, underlay.netns_exec, the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import FrameType

from underlay.echo import encode_request, parse_reply
from underlay.netns_exec import nsenter_net

_NUMBER = struct.Struct("!Q")


@dataclass(frozen=True)
class StreamReport:
    sent: int
    answered: int
    lost: int
    longest_outage_s: float
    seconds: float
    rate: float


def longest_loss_run(sent: int, answered: set[int]) -> int:
    """The longest run of consecutive probe numbers in range(sent) missing from `answered`."""
    longest = run = 0
    for number in range(sent):
        run = 0 if number in answered else run + 1
        longest = max(longest, run)
    return longest


def run_stream(destination: str, rate: float, drain: float) -> StreamReport:
    stop = False

    def stop_now(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, stop_now)
    signal.signal(signal.SIGTERM, stop_now)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    identifier = int.from_bytes(os.urandom(2), "big")
    answered: set[int] = set()
    sent = 0
    start = time.monotonic()

    def receive_until(deadline: float) -> None:
        """Take answers until `deadline` (at least once, even when already late)."""
        while True:
            ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            while ready:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                reply = parse_reply(data)
                if reply is not None and reply.identifier == identifier \
                        and len(reply.payload) == _NUMBER.size:
                    if not answered:
                        print("answering", flush=True)
                    answered.add(_NUMBER.unpack(reply.payload)[0])
            if time.monotonic() >= deadline:
                return

    while not stop:
        receive_until(start + sent / rate)
        if stop:
            break
        packet = encode_request(identifier, sent & 0xFFFF, payload=_NUMBER.pack(sent))
        with contextlib.suppress(OSError):  # no route: a lost probe like any other
            sock.sendto(packet, (destination, 0))
        sent += 1
    seconds = time.monotonic() - start
    receive_until(time.monotonic() + drain)
    sock.close()
    answered &= set(range(sent))
    return StreamReport(sent=sent, answered=len(answered), lost=sent - len(answered),
                        longest_outage_s=round(longest_loss_run(sent, answered) / rate, 3),
                        seconds=round(seconds, 3), rate=round(sent / seconds, 1) if seconds else 0)


class ProbeStream:
    """One stream from inside `netns` to `destination`, started at once."""

    def __init__(self, netns: str, destination: str, rate: float = 100.0) -> None:
        self.netns, self.destination = netns, destination
        self.process = subprocess.Popen(
            nsenter_net(netns, [sys.executable, "-m", "agent.lab.probe_stream", destination,
                                "--rate", str(rate)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_answering(self, timeout: float = 10.0) -> None:
        """Return once the first answer came back (the stream runs); error after `timeout`."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if line.strip() != "answering":
            self.process.kill()
            _, err = self.process.communicate()
            raise RuntimeError(f"probe stream {self.netns} -> {self.destination} got no answer "
                               f"within {timeout:.0f} s: {line.strip()} {err.strip()}")

    def stop(self, timeout: float = 10.0) -> StreamReport:
        """Stop sending, wait for the answers in flight, return the counts."""
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        if self.process.returncode != 0 or not lines:
            raise RuntimeError(f"probe stream {self.netns} -> {self.destination} failed "
                               f"({self.process.returncode}): {err.strip()}")
        return StreamReport(**json.loads(lines[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.lab.probe_stream",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("destination")
    parser.add_argument("--rate", type=float, default=100.0, help="probes per second")
    parser.add_argument("--drain", type=float, default=1.0,
                        help="seconds to wait for answers after the stop")
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error(f"--rate: {args.rate!r} must be > 0")
    report = run_stream(args.destination, args.rate, args.drain)
    print(json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
