"""Connectivity probe run inside namespaces: `serve` answers with the peer's address.

    python probe.py serve tcp|udp ADDR PORT    prints "ready", then answers each peer
    python probe.py connect tcp|udp HOST PORT  prints the answer; exit 1 if none in 2 s
"""

from __future__ import annotations

import socket
import sys


def serve(proto: str, addr: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        if proto == "tcp":
            sock.listen(64)
        print("ready", flush=True)
        while True:
            if proto == "tcp":
                conn, peer = sock.accept()
                with conn:
                    conn.sendall(f"{peer[0]}\n".encode())
            else:
                _, peer = sock.recvfrom(2048)
                sock.sendto(f"{peer[0]}\n".encode(), peer)


def connect(proto: str, host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(2.0)
            sock.connect((host, port))
            if proto == "udp":
                sock.send(b"hello")
            answer = sock.recv(2048).decode().strip()
    except OSError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    print(answer)
    return 0


if __name__ == "__main__":
    command, proto, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if command == "serve":
        serve(proto, host, port)
    else:
        sys.exit(connect(proto, host, port))
