"""Pure parts of the Docker front door: the mirror's plan and a process's container id."""

from __future__ import annotations

from agent.docker.containers import container_id_of_cgroups
from agent.docker.engine import DockerNetwork
from agent.docker.mirror import plan_mirror
from agent.store.schema import validate_network

CID = "9dc0e4fcce64dae298a782c671da09b2c7c6fa903f7930cd11e587c13536ffc0"


def _docker(ident: str, name: str, subnet: str, driver: str = "vxmesh") -> DockerNetwork:
    return DockerNetwork(id=ident, name=name, driver=driver, ipam_driver=driver,
                         subnets=(subnet,), labels={}, endpoints={})


def test_plan_creates_missing_and_removes_only_bound_gone_networks() -> None:
    blue = validate_network(name="blue", subnet="10.10.0.0/16", vni=4096)
    green = validate_network(name="green", subnet="10.11.0.0/16", vni=4097)
    docker = [_docker("a" * 64, "blue", "10.10.0.0/16"),
              _docker("b" * 64, "old", "10.12.0.0/16"),
              _docker("c" * 64, "creating", "10.13.0.0/16"),
              _docker("d" * 64, "bridge", "172.17.0.0/16", driver="bridge")]
    plan = plan_mirror({"blue": blue, "green": green}, docker,
                       bindings={"a" * 64: "blue", "b" * 64: "old"})
    assert [n.name for n in plan.create] == ["green"]
    assert [d.name for d in plan.remove] == ["old"]  # "creating" is not bound yet: kept
    assert plan.blocked == ()


def test_plan_leaves_a_name_held_by_another_driver() -> None:
    bridge = validate_network(name="bridge", subnet="10.20.0.0/16", vni=4100)
    plan = plan_mirror({"bridge": bridge},
                       [_docker("d" * 64, "bridge", "172.17.0.0/16", driver="bridge")], {})
    assert plan.create == () and plan.blocked == ("bridge",)


def test_plan_with_everything_in_place_does_nothing() -> None:
    blue = validate_network(name="blue", subnet="10.10.0.0/16", vni=4096)
    plan = plan_mirror({"blue": blue}, [_docker("a" * 64, "blue", "10.10.0.0/16")],
                       {"a" * 64: "blue"})
    assert plan.create == () and plan.remove == () and plan.blocked == ()


def test_container_id_from_cgroups() -> None:
    v1 = f"12:pids:/docker/{CID}\n11:memory:/docker/{CID}\n0::/\n"
    systemd = f"0::/system.slice/docker-{CID}.scope\n"
    assert container_id_of_cgroups(v1) == CID
    assert container_id_of_cgroups(systemd) == CID
    assert container_id_of_cgroups("0::/user.slice/session-1.scope\n") is None
    assert container_id_of_cgroups("4:memory:/process_api/df411a7473c49ffcb9334c\n") is None
