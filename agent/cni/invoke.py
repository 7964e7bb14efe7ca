"""Run CNI plugins the way a runtime does (libcni's `invoke`), for tests and bench/cni.py.

Owns: executing one plugin as a process (`CNI_*` variables in its environment, the request
configuration on stdin, the result or the error object on stdout, exit status 0 or 1), in
the runtime's network namespace if given (`run_plugin`); deriving a plugin's request
configuration from a conflist entry (spec section 3: `cniVersion`, `name`, `runtimeConfig`
from the declared capabilities, `prevResult`); running a whole conflist (`chain`: ADD and
CHECK in order, DEL in reverse, `prevResult` threaded as libcni does); a CNI bin dir holding
this tree's `vxmesh` launcher next to the system's reference plugins (`plugin_dir`).

May import: agent.cni.launcher, underlay.netns_exec, the standard library.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cni.launcher import install_launcher
from underlay.netns_exec import nsenter_net

SYSTEM_PLUGINS = Path("/usr/lib/cni")
ALL_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@dataclass
class PluginRun:
    """One finished plugin process."""

    code: int
    stdout: str
    stderr: str

    @property
    def value(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def error(self) -> dict[str, Any]:
        assert self.code != 0, f"expected a failure, got {self.stdout!r}"
        value = self.value
        assert isinstance(value, dict) and set(value) >= {"cniVersion", "code", "msg",
                                                          "details"}, self.stdout
        return value


@dataclass
class Attachment:
    """The attachment parameters of one container interface."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: str = ""
    capability_args: dict[str, Any] = field(default_factory=dict)


def plugin_dir(tmp: Path) -> Path:
    """A CNI bin dir with this tree's `vxmesh` launcher and the system's reference plugins."""
    directory = tmp / "cni-bin"
    install_launcher(directory)
    for plugin in SYSTEM_PLUGINS.iterdir():
        link = directory / plugin.name
        if not link.exists():
            link.symlink_to(plugin)
    return directory


def run_plugin(bin_dir: Path, plugin: str, command: str, config: dict[str, Any] | bytes, *,
               attachment: Attachment | None = None, host_netns: str | None = None,
               env: dict[str, str] | None = None, timeout: float = 60.0) -> PluginRun:
    """Run `plugin` from `bin_dir` with `command`; `host_netns` is where the runtime runs."""
    variables = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                 "CNI_PATH": str(bin_dir)}
    if attachment is not None:
        variables.update(CNI_CONTAINERID=attachment.container_id, CNI_NETNS=attachment.netns,
                         CNI_IFNAME=attachment.ifname, CNI_ARGS=attachment.args)
    variables.update(env or {})
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    argv = [str(bin_dir / plugin)]
    if host_netns is not None:
        argv = nsenter_net(host_netns, argv)
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=variables,
                          timeout=timeout, check=False)
    return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def request_config(conflist: dict[str, Any], plugin: dict[str, Any], version: str,
                   attachment: Attachment | None, prev: Any) -> dict[str, Any]:
    """The request configuration a runtime derives from one conflist entry (SPEC section 3)."""
    config = {k: v for k, v in plugin.items() if k != "capabilities"}
    config.update(cniVersion=version, name=conflist["name"])
    wanted = plugin.get("capabilities") or {}
    if attachment is not None:
        runtime = {k: v for k, v in attachment.capability_args.items() if wanted.get(k)}
        if runtime:
            config["runtimeConfig"] = runtime
    if prev is not None:
        config["prevResult"] = prev
    return config


def chain(bin_dir: Path, conflist: dict[str, Any], command: str, attachment: Attachment, *,
          version: str, host_netns: str | None = None, prev: Any = None
          ) -> tuple[PluginRun, Any]:
    """Run every plugin of `conflist` for `command` as libcni does; (last run, final result).

    ADD threads each result into the next plugin's `prevResult`; CHECK and DEL give every
    plugin the final ADD result `prev`; DEL runs the list in reverse. Stops at the first
    failure and returns it."""
    plugins = list(conflist["plugins"])
    if command == "DEL":
        plugins.reverse()
    result = prev
    last = PluginRun(0, "", "")
    for plugin in plugins:
        given = result if command == "ADD" else prev
        config = request_config(conflist, plugin, version, attachment, given)
        last = run_plugin(bin_dir, plugin["type"], command, config, attachment=attachment,
                          host_netns=host_netns)
        if last.code != 0:
            return last, result
        if command == "ADD":
            result = last.value
    return last, result
