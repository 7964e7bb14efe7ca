"""The `vxmesh` CNI plugin as a runtime sees it, before any agent work: a process given `CNI_*`
variables and stdin, over every spec version. Every error code the plugin decides itself,
each naming the variable or field and its value; VERSION; STATUS and DEL with the agent down;
the result shapes of each version; the launcher and the start-up budget (standard library).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.api.errors import InvalidRequest
from agent.cni import spec
from agent.cni.conflist import conflist, write_conflist
from agent.cni.invoke import ALL_VERSIONS, Attachment, plugin_dir, run_plugin
from agent.cni.launcher import install_launcher, launcher_text, source_root
from agent.cni.netconf import attachment_name
from agent.cni.service import parse_exec
from agent.lab.namespaces import NetnsLab


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugin_dir(tmp_path_factory.mktemp("cni"))


def _config(version: str, socket: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "blue", "type": "vxmesh", "socket": socket} | extra


@pytest.fixture
def dead_socket(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "agent.sock")  # no agent there


def test_version_answers_every_supported_version(bin_dir: Path) -> None:
    for version in ALL_VERSIONS:
        run = run_plugin(bin_dir, "vxmesh", "VERSION", {"cniVersion": version})
        assert run.code == 0
        assert run.value == {"cniVersion": version, "supportedVersions": list(ALL_VERSIONS)}


def test_version_without_configuration(bin_dir: Path) -> None:
    run = run_plugin(bin_dir, "vxmesh", "VERSION", b"")
    assert run.code == 0 and run.value["supportedVersions"] == list(ALL_VERSIONS)


def _fails(run: Any, code: int, *named: str) -> dict[str, Any]:
    error: dict[str, Any] = run.error()
    assert error["code"] == code, error
    for text in named:
        assert text in error["details"], (text, error)
    return error


BAD_ENVIRONMENT = [
    ({"CNI_COMMAND": ""}, ("CNI_COMMAND",)),
    ({"CNI_COMMAND": "ATTACH"}, ("CNI_COMMAND", "'ATTACH'")),
    ({"CNI_NETNS": ""}, ("CNI_NETNS", "required")),
    ({"CNI_CONTAINERID": ""}, ("CNI_CONTAINERID", "required")),
    ({"CNI_CONTAINERID": "-bad/id"}, ("CNI_CONTAINERID", "'-bad/id'")),
    ({"CNI_IFNAME": "a-very-long-ifname"}, ("CNI_IFNAME", "'a-very-long-ifname'")),
    ({"CNI_IFNAME": "eth/0"}, ("CNI_IFNAME", "'eth/0'")),
    ({"CNI_NETNS": "relative/ns"}, ("CNI_NETNS", "'relative/ns'")),
    ({"CNI_NETNS": "/nonexistent/netns"}, ("CNI_NETNS", "'/nonexistent/netns'")),
    ({"CNI_NETNS": "/proc/self/ns/uts"}, ("CNI_NETNS", "not a network namespace")),
    ({"CNI_NETNS": "/proc/self/ns/net"}, ("CNI_NETNS", "own")),
    ({"CNI_ARGS": "IP"}, ("CNI_ARGS", "'IP'")),
    ({"CNI_ARGS": "COLOR=red"}, ("COLOR", "'red'", "IgnoreUnknown")),
    ({"CNI_ARGS": "IP=10.0.0.300"}, ("CNI_ARGS IP", "'10.0.0.300'")),
]


def _rotating(cases: list[Any]) -> list[Any]:
    """Each case with one spec version, rotating through all of them (every version meets
    every kind of refusal without running each case five times)."""
    return [(*case, ALL_VERSIONS[i % len(ALL_VERSIONS)]) for i, case in enumerate(cases)]


@pytest.mark.parametrize(("env", "named", "version"), _rotating(BAD_ENVIRONMENT),
                         ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _ in
                              BAD_ENVIRONMENT])
def test_bad_environment_is_code_4_naming_it(bin_dir: Path, dead_socket: str, version: str,
                                              env: dict[str, str],
                                              named: tuple[str, ...]) -> None:
    base = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0"}
    run = run_plugin(bin_dir, "vxmesh", "ADD", _config(version, dead_socket),
                     env={**base, **env})
    error = _fails(run, spec.INVALID_ENVIRONMENT, *named)
    assert error["cniVersion"] == version


def test_gc_needs_cni_path(bin_dir: Path, dead_socket: str) -> None:
    run = run_plugin(bin_dir, "vxmesh", "GC", _config("1.1.0", dead_socket),
                     env={"CNI_PATH": ""})
    _fails(run, spec.INVALID_ENVIRONMENT, "CNI_PATH")


BAD_STDIN: list[tuple[bytes, int, tuple[str, ...]]] = [
    (b"{not json", spec.DECODING_FAILURE, ("stdin", "not JSON")),
    (b"[1, 2]", spec.DECODING_FAILURE, ("stdin", "list")),
    (b'{"name": "blue"}', spec.INCOMPATIBLE_VERSION, ("cniVersion", "missing")),
    (b'{"cniVersion": "0.2.0", "name": "blue"}', spec.INCOMPATIBLE_VERSION, ("'0.2.0'",)),
    (b'{"cniVersion": "one", "name": "blue"}', spec.DECODING_FAILURE, ("'one'",)),
]


@pytest.mark.parametrize(("stdin", "code", "named"), BAD_STDIN,
                         ids=["not-json", "not-object", "no-version", "old-version",
                              "bad-version"])
def test_bad_stdin_is_refused_with_its_code(bin_dir: Path, stdin: bytes, code: int,
                                             named: tuple[str, ...]) -> None:
    attachment = Attachment("c1", "/proc/self/ns/net")
    _fails(run_plugin(bin_dir, "vxmesh", "ADD", stdin, attachment=attachment), code, *named)


BAD_CONFIG: list[tuple[dict[str, Any], int, tuple[str, ...]]] = [
    ({"subnett": "10.1.0.0/16"}, spec.UNSUPPORTED_FIELD, ("subnett", "'10.1.0.0/16'")),
    ({"network": "Blue!"}, spec.INVALID_CONFIG, ("network", "'Blue!'")),
    ({"subnet": "10.1.0.0/33"}, spec.INVALID_CONFIG, ("subnet", "'10.1.0.0/33'")),
    ({"subnet": "10.1.0.1/16"}, spec.INVALID_CONFIG, ("subnet", "'10.1.0.1/16'")),
    ({"socket": "agent.sock"}, spec.INVALID_CONFIG, ("socket", "'agent.sock'")),
    ({"mtu": 100}, spec.INVALID_CONFIG, ("mtu", "100")),
    ({"vni": 0}, spec.INVALID_CONFIG, ("vni", "0")),
    ({"type": "bridge"}, spec.INVALID_CONFIG, ("type", "'bridge'")),
    ({"dns": ["10.0.0.1"]}, spec.INVALID_CONFIG, ("dns",)),
    ({"runtimeConfig": {"ips": ["10.1.0.5/16", "10.1.0.6/16"]}}, spec.INVALID_CONFIG,
     ("runtimeConfig.ips",)),
    ({"runtimeConfig": {"mac": "01:00:00:00:00:01"}}, spec.INVALID_CONFIG,
     ("runtimeConfig.mac", "'01:00:00:00:00:01'")),
    ({"prevResult": {"ips": [{"address": "nonsense"}]}}, spec.DECODING_FAILURE,
     ("prevResult",)),
]


@pytest.mark.parametrize(("extra", "code", "named", "version"), _rotating(BAD_CONFIG),
                         ids=[next(iter(e)) for e, _, _ in BAD_CONFIG])
def test_bad_config_is_refused_naming_the_field(bin_dir: Path, dead_socket: str,
                                                version: str, extra: dict[str, Any], code: int,
                                                named: tuple[str, ...]) -> None:
    run = run_plugin(bin_dir, "vxmesh", "ADD", {**_config(version, dead_socket), **extra},
                     attachment=Attachment("c1", "/proc/self/ns/net"))
    _fails(run, code, *named)


@pytest.mark.parametrize(("command", "first"), [("CHECK", "0.4.0"), ("GC", "1.1.0"),
                                                ("STATUS", "1.1.0")])
def test_commands_newer_than_the_configuration_are_code_1(bin_dir: Path, dead_socket: str,
                                                          command: str, first: str) -> None:
    for version in ALL_VERSIONS:
        run = run_plugin(bin_dir, "vxmesh", command, _config(version, dead_socket),
                         attachment=Attachment("c1", "/proc/self/ns/net"))
        if spec.version_key(version) < spec.version_key(first):
            _fails(run, spec.INCOMPATIBLE_VERSION, command, first)
        else:
            assert run.value is None or run.value.get("code") != spec.INCOMPATIBLE_VERSION


def test_status_with_the_agent_down_is_51(bin_dir: Path, dead_socket: str) -> None:
    run = run_plugin(bin_dir, "vxmesh", "STATUS", _config("1.1.0", dead_socket))
    _fails(run, spec.NOT_AVAILABLE_LIMITED, dead_socket)


def test_gc_with_the_agent_down_is_try_again(bin_dir: Path, dead_socket: str) -> None:
    run = run_plugin(bin_dir, "vxmesh", "GC", _config(
        "1.1.0", dead_socket, **{"cni.dev/valid-attachments": [
            {"containerID": "c1", "ifname": "eth0"}]}))
    _fails(run, spec.TRY_AGAIN_LATER, dead_socket)


def test_gc_refuses_malformed_valid_attachments(bin_dir: Path, dead_socket: str) -> None:
    run = run_plugin(bin_dir, "vxmesh", "GC", _config(
        "1.1.0", dead_socket, **{"cni.dev/valid-attachments": [{"containerID": 7}]}))
    _fails(run, spec.DECODING_FAILURE, "cni.dev/valid-attachments")


def test_del_with_the_agent_down_succeeds_and_leaves_it_for_the_agent(
        bin_dir: Path, dead_socket: str) -> None:
    for version in ALL_VERSIONS:
        attachment = Attachment(f"c-{version}", "/run/netns/long-gone", ifname="net1")
        for _ in range(2):  # DEL twice: both succeed, one request left
            run = run_plugin(bin_dir, "vxmesh", "DEL", _config(version, dead_socket),
                             attachment=attachment)
            assert run.code == 0 and run.stdout == "", run
        spooled = Path(dead_socket).parent / "cni-detach" / \
            f"{attachment_name(attachment.container_id, 'net1')}.json"
        assert json.loads(spooled.read_text()) == {
            "container_id": attachment.container_id, "ifname": "net1", "network": "blue"}


@pytest.mark.kernel
def test_add_with_the_agent_down_is_try_again_later(bin_dir: Path, dead_socket: str,
                                                     netns_lab: NetnsLab) -> None:
    container = netns_lab.ns("c")
    for version in ALL_VERSIONS:
        run = run_plugin(bin_dir, "vxmesh", "ADD", _config(version, dead_socket),
                         attachment=Attachment("c1", f"/run/netns/{container}"))
        _fails(run, spec.TRY_AGAIN_LATER, dead_socket)


RESULT = spec.Result(
    interfaces=(spec.Interface("vxep0123456789", "02:00:00:00:00:01"),
                spec.Interface("eth0", "02:42:0a:01:00:05", "/run/netns/c1", 1450)),
    ips=(spec.IPConfig("10.1.0.5/16", "10.1.0.1", 1), spec.IPConfig("fd00::5/64", None, 1)),
    routes=(spec.Route("0.0.0.0/0", "10.1.0.1"),),
    dns={"nameservers": ["10.1.0.1"]})


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_results_have_exactly_their_versions_keys(version: str) -> None:
    rendered = RESULT.render(version)
    legacy = spec.version_key(version) < (1, 0, 0)
    assert rendered["cniVersion"] == version
    assert [ip.get("version") for ip in rendered["ips"]] == (["4", "6"] if legacy
                                                            else [None, None])
    assert rendered["ips"][0] == {**({"version": "4"} if legacy else {}),
                                  "address": "10.1.0.5/16", "gateway": "10.1.0.1",
                                  "interface": 1}
    assert "gateway" not in rendered["ips"][1]
    container = rendered["interfaces"][1]
    assert container["sandbox"] == "/run/netns/c1"
    assert ("mtu" in container) == (version == "1.1.0")
    assert "sandbox" not in rendered["interfaces"][0]
    assert rendered["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert rendered["dns"] == {"nameservers": ["10.1.0.1"]}
    assert spec.parse_result(rendered) == spec.Result(
        RESULT.interfaces if version == "1.1.0" else (
            RESULT.interfaces[0], spec.Interface("eth0", "02:42:0a:01:00:05", "/run/netns/c1")),
        RESULT.ips, RESULT.routes, RESULT.dns)


def test_a_previous_result_comes_first_and_indexes_shift() -> None:
    earlier = spec.Result(interfaces=(spec.Interface("lo0"),),
                          ips=(spec.IPConfig("192.168.0.2/24", None, 0),))
    merged = spec.merge_results(earlier, RESULT)
    assert [i.name for i in merged.interfaces] == ["lo0", "vxep0123456789", "eth0"]
    assert [ip.interface for ip in merged.ips] == [0, 2, 2]


def test_conflist_chains_portmap_after_vxmesh(tmp_path: Path) -> None:
    document = conflist("blue", socket="/run/vxmesh/agent.sock", subnet="10.1.0.0/16")
    assert document == {
        "cniVersion": "1.0.0", "name": "blue",
        "plugins": [{"type": "vxmesh", "network": "blue", "socket": "/run/vxmesh/agent.sock",
                     "capabilities": {"ips": True, "mac": True}, "subnet": "10.1.0.0/16"},
                    {"type": "portmap", "capabilities": {"portMappings": True}}]}
    path = write_conflist(tmp_path / "net.d", "blue", document)
    assert path.name == "blue.conflist" and json.loads(path.read_text()) == document


def test_the_fronts_request_body_is_the_environment_then_stdin() -> None:
    env, stdin = parse_exec(b"CNI_COMMAND=ADD\0CNI_ARGS=A=1;B=2\0\0{\"x\": 1}")
    assert env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2"} and stdin == b'{"x": 1}'
    assert parse_exec(b"\0") == ({}, b"")


@pytest.mark.parametrize("body", [b"", b"CNI_COMMAND=ADD\0", b"PATH=/bin\0\0{}",
                                  b"CNI_COMMAND\0\0{}"])
def test_a_malformed_front_request_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_exec(body)


def test_the_installed_plugin_is_the_compiled_front_where_cc_exists(tmp_path: Path) -> None:
    installed = install_launcher(tmp_path)
    head = installed.read_bytes()[:4]
    assert (head == b"\x7fELF") if shutil.which("cc") else head.startswith(b"#!")
    assert installed.stat().st_mode & 0o777 == 0o755


def test_the_plugin_loads_only_the_standard_library() -> None:
    """The launcher's `python -I -S` cannot even see site-packages; and the plugin keeps its
    start cheap: none of the slow standard modules is imported on the way to its main."""
    probe = ("import sys; import agent.cni.plugin; "
             "print(','.join(sorted(m for m in sys.modules)))")
    answer = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True,
                            text=True, check=True, cwd=source_root(),
                            env={"PYTHONPATH": str(source_root())})
    loaded = set(answer.stdout.strip().split(","))
    assert not loaded & {"trio", "pyroute2", "grpc", "etcd3", "h11", "msgpack"}
    slow = {"http", "http.client", "email", "ssl", "dataclasses", "typing", "ipaddress",
            "hashlib", "asyncio", "subprocess", "json", "re", "socket", "enum", "contextlib",
            "os"}
    assert not loaded & slow, sorted(loaded & slow)
    first, _, body = launcher_text().partition("\n")
    assert first.startswith("#!") and first.endswith(" -IS") and repr(str(source_root())) in body
