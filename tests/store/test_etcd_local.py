"""The local etcd runner: healthy on start, data survives kill and restart on the same ports."""

from __future__ import annotations

import socket
from pathlib import Path

import etcd3
import pytest

from agent.lab.etcd_local import LocalEtcd, free_loopback_port
from agent.store.errors import EtcdStartError

pytestmark = pytest.mark.etcd


def test_kill_and_restart_keeps_ports_and_data(local_etcd: LocalEtcd) -> None:
    host, port = local_etcd.endpoint
    client = etcd3.client(host=host, port=port, timeout=5)
    client.put("/vxmesh/test/k", "v1")
    first_pid = local_etcd.pid
    local_etcd.kill()
    assert not local_etcd.is_running()
    assert local_etcd.health() is not True
    local_etcd.start()
    assert local_etcd.pid != first_pid
    assert local_etcd.endpoint == (host, port)
    value, _ = client.get("/vxmesh/test/k")
    assert value == b"v1"
    client.close()


def test_stop_is_graceful_and_idempotent(local_etcd: LocalEtcd) -> None:
    local_etcd.stop()
    local_etcd.stop()
    assert local_etcd.pid is None
    local_etcd.restart()
    assert local_etcd.health() is True


def test_bad_binary_fails_with_log_tail(tmp_path: Path) -> None:
    server = LocalEtcd(tmp_path / "d", binary="/bin/false", client_port=free_loopback_port())
    with pytest.raises(EtcdStartError, match="exited"):
        server.start(timeout=3)
    assert server.pid is None


def test_port_taken_before_first_start_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        ports = iter([busy, free_loopback_port()])
        monkeypatch.setattr(
            "agent.lab.etcd_local.free_loopback_port",
            lambda: next(ports, None) or free_loopback_port(),
        )
        server = LocalEtcd(tmp_path / "d")
        assert server.client_port == busy
        try:
            server.start()
            assert server.client_port != busy
            assert server.health() is True
        finally:
            server.stop()
