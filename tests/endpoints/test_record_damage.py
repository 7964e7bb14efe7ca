"""Endpoint records on a full disk and damaged records: no address outlives its endpoint's
record, and no running endpoint is cut off because its record is unreadable."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.endpoints.conftest import Site, nsenter
from underlay import links
from underlay.endpoints_model import (
    EndpointRecord,
    EndpointsConfig,
    EndpointSpec,
    Mode,
    host_veth_name,
    resolve,
)
from underlay.endpoints_state import OVERLAYS_FILE, RecordStore
from underlay.errors import RecordWriteError
from underlay.nat_table import OverlayEgress

pytestmark = pytest.mark.kernel


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at a fresh directory (unmounted after the test)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"vxmesh16-{os.getpid()}",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            for _ in range(1 << 20):  # bounded: 4 GiB would be far beyond the tmpfs
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RecordStore(tmp_path)
    real_write = os.write
    calls = []

    def three_bytes_at_a_time(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))

    record = _record("short")
    monkeypatch.setattr(os, "write", three_bytes_at_a_time)
    store.save(record)
    monkeypatch.undo()
    assert len(calls) > 10
    records, restored, bad = store.load()
    assert records == [record] and restored == [] and bad == []
    store.close()


def _record(name: str) -> EndpointRecord:
    return resolve(EndpointSpec(name, Mode.NONE), EndpointsConfig(state_dir=Path("/x")), [])


async def test_a_full_disk_mid_create_leaves_nothing_behind(site: Site, small_disk: Path) -> None:
    config = site.config(site.h1, "d", state_dir=small_disk)
    filler: list[Path] = []

    def disk_full_after_first_record(name: str, step: str) -> None:
        if name == "victim" and step == "recorded" and not filler:
            filler.append(fill(small_disk))

    service = site.service(config, on_step=disk_full_after_first_record)
    await service.start()
    keeper = await service.create(EndpointSpec("keeper", Mode.BRIDGE))
    with pytest.raises(RecordWriteError, match="No space left"):
        await service.create(EndpointSpec("victim", Mode.BRIDGE))
    # The endpoint was rolled back whole: no namespace, no veth, no record; the caller may
    # release its address without it being held by a live endpoint.
    assert [r.name for r in service.records()] == ["keeper"]
    assert links.list_netns(prefix=config.netns_prefix) == [f"{config.netns_prefix}keeper"]
    assert not (small_disk / "endpoints" / "victim.json").exists()
    assert list((small_disk / "endpoints").glob("*.tmp")) == []
    # Still full: a new create is refused before anything exists.
    with pytest.raises(RecordWriteError):
        await service.create(EndpointSpec("second", Mode.BRIDGE))
    assert links.list_netns(prefix=config.netns_prefix) == [f"{config.netns_prefix}keeper"]
    filler[0].unlink()
    again = await service.create(EndpointSpec("victim", Mode.BRIDGE))
    assert again.addresses != keeper.addresses
    assert service.get("keeper") == keeper


async def test_a_damaged_record_is_restored_and_its_endpoint_keeps_working(site: Site) -> None:
    config = site.config(site.h1, "r")
    first = site.service(config)
    await first.start()
    record = await first.create(EndpointSpec("app", Mode.BRIDGE))
    ip = record.addresses[0].split("/")[0]
    first.close()
    path = config.state_dir / "endpoints" / "app.json"
    path.write_text('{"spec": {"name": "app", "mo')  # torn by hand

    restarted = site.service(config)
    report = await restarted.start()
    assert report.restored == ("app",) and report.unreadable == ()
    assert report.orphan_namespaces == () and report.orphan_links == ()
    assert restarted.get("app") == record
    assert subprocess.run([*nsenter(site.h1), "ping", "-c", "1", "-W", "2", ip],
                          capture_output=True, check=False).returncode == 0


async def test_an_unreadable_record_never_gets_its_namespace_collected(site: Site) -> None:
    config = site.config(site.h1, "u")
    first = site.service(config)
    await first.start()
    record = await first.create(EndpointSpec("app", Mode.BRIDGE))
    first.close()
    directory = config.state_dir / "endpoints"
    (directory / "app.json").write_text("garbage")
    (directory / "app.json.copy").write_text("garbage too")

    restarted = site.service(config)
    report = await restarted.start()
    assert report.unreadable == ("app",)
    assert report.orphan_namespaces == () and report.orphan_links == ()
    assert links.list_netns(prefix=config.netns_prefix) == [record.netns]
    assert (directory / "app.json.bad").exists()
    nl_links = subprocess.run([*nsenter(site.h1), "ip", "-o", "link", "show",
                               host_veth_name("app")], capture_output=True, check=False)
    assert nl_links.returncode == 0, "the host veth of the unreadable endpoint was deleted"


async def test_the_overlay_isolation_is_rendered_from_the_first_transaction_after_a_restart(
        site: Site) -> None:
    config = site.config(site.h1, "o")
    overlays = (OverlayEgress("ova", "vxbr4101", "10.41.0.0/24"),
                OverlayEgress("ovb", "vxbr4102", "10.42.0.0/24", internal=True,
                              subnet6="fd41::/64"))
    first = site.service(config)
    await first.start()
    await first.set_overlay_egress(overlays)
    first.close()  # a stop removes nothing

    def table(family: str) -> str:
        return subprocess.run([*nsenter(site.h1), "nft", "list", "table", family, "vxmesh"],
                              capture_output=True, text=True, check=False).stdout

    assert 'iifname "vxbr4101" oifname "vxbr4102" drop' in table("ip")
    restarted = site.service(config)
    await restarted.start()  # its recovery replaces the table: with the same overlay rules
    assert restarted.overlay_egress() == overlays
    assert 'iifname "vxbr4101" oifname "vxbr4102" drop' in table("ip")
    assert 'oifname "vxbr4102" iifname != "vxbr4102" drop' in table("ip6")
    restarted.close()
    (config.state_dir / "endpoints" / OVERLAYS_FILE).write_text("[{\"name\": 1, \"x\"")
    damaged = site.service(config)
    await damaged.start()  # unreadable: nothing rendered until the agent applies its own
    assert damaged.overlay_egress() == ()
