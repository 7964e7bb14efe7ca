"""A two-host lab with one network, for the end-to-end tests that need no more: real
namespaces, etcd and agent processes, torn down (and its directory removed) even on failure.

The directory is not under pytest's basetemp: a concurrent pytest run prunes old ones (and the
agents' sockets in them)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.lab.hosts import Lab, LabState


@contextlib.contextmanager
def two_host_lab(directory_prefix: str, prefix: str, network: str, subnet: str,
                 config: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> Iterator[tuple[Lab, LabState]]:
    """Two lab hosts named by `prefix`, with `network` (`subnet`) created through h1's API."""
    directory = Path(tempfile.mkdtemp(prefix=directory_prefix))
    the_lab = Lab(directory, prefix=prefix, config=config)
    try:
        state = the_lab.up(2)
        the_lab.client(state.hosts[0]).request("POST", "/v1/networks",
                                               {"name": network, "subnet": subnet})
        yield the_lab, state
    finally:
        the_lab.down()
        shutil.rmtree(directory, ignore_errors=True)
