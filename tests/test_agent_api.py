"""agent.api.routes + agent.cli.main over a real unix socket: routing, validation, errors,
exit codes.

The daemon's side is `RecordingControl` here, which records what the API asked for; the real
daemon behind the same API is exercised by tests/e2e.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.api.attach import Attachment, AttachRequest
from agent.api.errors import (
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    InvalidRequest,
    NotFound,
    exit_code_for_status,
    http_status,
)
from agent.api.routes import NetworkCreateRequest, parse_attach_request, serve_api
from agent.cli.main import main
from agent.store.errors import AddressTaken, InvalidAddress
from agent.terminal import render_table
from underlay.errors import KernelError, KernelTimedOut


def attachment(request: AttachRequest) -> Attachment:
    """What the agent would answer for `request` (the fields the CLI prints)."""
    return Attachment(name=request.name, network=request.network, mode=request.mode,
                      node="h1", ip=request.ip, addresses=(), mac=None, mtu=None, gateway=None,
                      routes=(), netns=None, sandbox=None, ifname=None, host_ifname=None,
                      handed_back=None, bridge=None, state="ready")


class RecordingControl:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def status(self) -> dict[str, Any]:
        return {"node": "h1", "ready": True}

    def members(self) -> list[dict[str, Any]]:
        return [{"name": "h1", "address": "10.0.0.1:7946", "state": "alive"}]

    async def networks(self) -> list[dict[str, Any]]:
        return []

    async def create_network(self, spec: NetworkCreateRequest) -> dict[str, Any]:
        self.calls.append(("create_network", spec))
        return {"name": spec.name, "vni": spec.vni or 4096}

    async def delete_network(self, name: str) -> None:
        raise NotFound(f"no network {name!r}")

    def endpoints(self) -> list[dict[str, Any]]:
        return []

    def endpoint(self, name: str) -> Attachment:
        raise NotFound(f"no endpoint {name!r}")

    async def attach(self, request: AttachRequest) -> Attachment:
        self.calls.append(("attach", request))
        return attachment(request)

    async def detach(self, name: str) -> bool:
        self.calls.append(("detach", name))
        return True

    def keys(self) -> dict[str, Any]:
        return {"primary": "k", "keys": ["k"]}

    async def change_key(self, action: str, key: bytes) -> dict[str, Any]:
        self.calls.append((action, key))
        return {"primary": "k", "keys": ["k"]}

    async def fdb(self, network: str | None) -> dict[str, Any]:
        return {"entries": [], "in_sync": True}


def _curl(sock: Path, method: str, path: str, body: object = None) -> tuple[int, Any]:
    argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", str(sock),
            "-X", method, f"http://vxmesh{path}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else None


async def test_api_over_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "agent.sock"
    control = RecordingControl()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_api, control, sock)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660

        def exercise() -> None:
            assert _curl(sock, "GET", "/v1/status") == (200, {"node": "h1", "ready": True})
            code, body = _curl(sock, "POST", "/v1/networks", {"name": "blue", "vni": 0})
            assert code == 400 and "vni" in body["error"]["message"]
            assert body["error"]["status"] == 400
            code, body = _curl(sock, "POST", "/v1/networks",
                               {"name": "blue", "subnet": "10.9.0.0/16", "mtu": 1400})
            assert code == 201 and body["name"] == "blue"
            code, body = _curl(sock, "POST", "/v1/endpoints",
                               {"name": "web", "network": "blue", "mode": "macvlan",
                                "publish": ["8080:80/tcp"]})
            assert code == 400 and "publish" in body["error"]["message"]
            code, body = _curl(sock, "DELETE", "/v1/networks/red")
            assert code == 404 and "red" in body["error"]["message"]
            assert _curl(sock, "PUT", "/v1/status")[0] == 405
            assert _curl(sock, "GET", "/v2/nothing")[0] == 404
            code, body = _curl(sock, "POST", "/v1/keys/install", {"key": "c2hvcnQ="})
            assert code == 400 and "16, 24 or 32" in body["error"]["message"]

        await trio.to_thread.run_sync(exercise)
        assert [c[0] for c in control.calls] == ["create_network"]
        assert control.calls[0][1] == NetworkCreateRequest("blue", "10.9.0.0/16", None, 1400)

        args = ["--socket", str(sock)]
        code = await trio.to_thread.run_sync(main, ["network", "delete", "red", *args])
        assert code == EXIT_NOT_FOUND
        code = await trio.to_thread.run_sync(main, ["members", "--json", *args])
        assert code == 0
        nursery.cancel_scope.cancel()
    assert not sock.exists()


def test_cli_exit_codes_without_an_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == EXIT_UNREACHABLE
    assert "cannot reach the agent" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["endpoint", "create", "web", "--mode", "warp"])
    assert exited.value.code == EXIT_USAGE


def test_lab_vm_names_a_bad_size_before_it_builds_or_boots_anything(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "vm", "--nodes", "4"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "vxmesh: --nodes 4: must be 1, 2 or 3 (TCG VMs on this machine)")
    assert main(["lab", "vm", "--count", "3"]) == EXIT_USAGE
    assert "--count 3: must be at least 10" in capsys.readouterr().err


def test_a_kernel_that_refuses_is_422_and_one_that_does_not_answer_is_503() -> None:
    # A refusal (EEXIST, ENODEV, ...) will refuse again; a netlink request with no answer in
    # time changed nothing known and is worth a retry, like etcd being away.
    assert http_status(KernelError("add link: File exists", 17)) == 422
    timed_out = KernelTimedOut("netlink: no answer within 5 s")
    assert isinstance(timed_out, KernelError) and timed_out.errno == 110
    assert http_status(timed_out) == 503
    assert exit_code_for_status(http_status(timed_out)) == EXIT_UNAVAILABLE


def test_endpoint_spec_validation_names_fields() -> None:
    spec = parse_attach_request({"name": "web", "network": "blue", "mode": "bridge",
                                "publish": ["8080:80/tcp"]})
    assert [str(p) for p in spec.publish] == ["8080:80/tcp"]
    cases: list[tuple[dict[str, Any], str]] = [
                        ({"name": "Web!", "network": "blue"}, "name"),
                        ({"name": "web"}, "network"),
                        ({"name": "web", "network": "blue", "ip": "10.0.0.300"}, "ip"),
                        ({"name": "web", "mode": "host", "ports": ["80/sctp"]}, "ports"),
                        ({"name": "web", "network": "blue", "colour": "red"}, "colour")]
    for body, field in cases:
        with pytest.raises(InvalidRequest, match=field):
            parse_attach_request(body)


def test_render_table_aligns_columns() -> None:
    text = render_table([{"name": "h1", "ok": True}, {"name": "host-2", "ok": None}],
                        ["name", "ok"])
    assert text.splitlines() == ["NAME    OK", "h1      yes", "host-2  -"]


class ChosenAddressControl(RecordingControl):
    """Answers `--ip` like the daemon's IPAM would: one address taken, the gateway invalid."""

    async def attach(self, request: AttachRequest) -> Attachment:
        self.calls.append(("attach", request))
        if request.ip == "10.9.0.7":
            raise AddressTaken(request.ip, "h2/db")
        if request.ip == "10.9.0.1":
            raise InvalidAddress("ip", request.ip, "the gateway of network blue")
        return attachment(request)


async def test_cli_ip_for_an_overlay_endpoint_and_its_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "agent.sock"
    control = ChosenAddressControl()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_api, control, sock))

        def create(ip: str) -> int:
            return main(["endpoint", "create", "web", "--network", "blue", "--ip", ip,
                         "--socket", str(sock), "--json"])

        assert await trio.to_thread.run_sync(create, "10.9.0.20") == EXIT_OK
        assert json.loads(capsys.readouterr().out)["ip"] == "10.9.0.20"
        assert await trio.to_thread.run_sync(create, "10.9.0.7") == EXIT_CONFLICT
        assert "ip='10.9.0.7' is allocated to 'h2/db' (HTTP 409)" in capsys.readouterr().err
        assert await trio.to_thread.run_sync(create, "10.9.0.1") == EXIT_USAGE
        assert "ip='10.9.0.1': the gateway" in capsys.readouterr().err
        nursery.cancel_scope.cancel()
    specs = [c[1] for c in control.calls]
    assert [(s.mode, s.network, s.ip) for s in specs] == [
        ("overlay", "blue", ip) for ip in ("10.9.0.20", "10.9.0.7", "10.9.0.1")]


class BrokenControl(RecordingControl):
    def status(self) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")


async def test_bad_names_deep_json_huge_numbers_are_400_and_500_says_nothing(
        tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"

    def raw(method: str, path: str, data: str | None = None) -> tuple[int, str]:
        argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", str(sock),
                "-X", method, f"http://vxmesh{path}"]
        if data is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        out = subprocess.run(argv, input=data, capture_output=True, text=True,
                             timeout=10).stdout
        text, _, code = out.rpartition("\n")
        return int(code), text

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_api, BrokenControl(), sock)

        def exercise() -> None:
            assert raw("POST", "/v1/networks", json.dumps({"name": "net1\n"}))[0] == 400
            assert raw("POST", "/v1/networks", "[" * 100_000 + "]" * 100_000)[0] == 400
            assert raw("POST", "/v1/networks", '{"name": "a", "vni": 1' + "0" * 5000 + "}"
                       )[0] == 400
            code, text = raw("GET", "/v1/status")
            assert code == 500 and "secret" not in text and "RuntimeError" not in text

        await trio.to_thread.run_sync(exercise)
        nursery.cancel_scope.cancel()


def test_cli_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`vxmesh ... | head -1`: no traceback when the reader goes away first."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli.main", "lab", "--dir", str(tmp_path), "status"],
            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(writer)
    assert done.returncode == 141 and done.stderr == ""
