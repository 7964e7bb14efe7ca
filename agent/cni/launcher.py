"""The executable runtimes find as CNI plugin type `vxmesh`: a two-line shell launcher.

Owns: the launcher's text (this tree's venv python with `-S`, so the plugin can load nothing
but the standard library, running `agent.cni.plugin.main`; `-c` rather than `-m` spares
runpy's imports), and installing it into CNI bin dirs.
`deploy/setup.sh` runs `python -m agent.cni.launcher /usr/lib/cni /opt/cni/bin`; the lab and
the tests install it into directories of their own.

Standard library only.
"""

from __future__ import annotations

import os
import py_compile
import shlex
import sys
from pathlib import Path

PLUGIN_NAME = "vxmesh"


def source_root() -> Path:
    """The directory holding the `agent` package this launcher should run."""
    return Path(__file__).resolve().parents[2]


def launcher_text(python: str | None = None, root: Path | None = None) -> str:
    python = python or sys.executable
    root = root or source_root()
    return ("#!/bin/sh\n"
            "# vxmesh CNI plugin: agent/cni/plugin.py on the standard library only (-S).\n"
            f"PYTHONPATH={shlex.quote(str(root))} exec {shlex.quote(python)} -S -c "
            "'from agent.cni.plugin import main; main()'\n")


def compile_plugin(root: Path | None = None) -> None:
    """Byte-compile the plugin's modules, so that a start never compiles them (even where
    PYTHONDONTWRITEBYTECODE keeps python from writing its cache)."""
    root = root or source_root()
    for source in [root / "agent" / "__init__.py", root / "agent" / "unix_http.py",
                   *sorted((root / "agent" / "cni").glob("*.py"))]:
        py_compile.compile(str(source), doraise=True)


def install_launcher(directory: Path, python: str | None = None,
                     root: Path | None = None) -> Path:
    """Write the launcher as `directory/vxmesh` (mode 0755), atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PLUGIN_NAME
    temporary = directory / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
    temporary.write_text(launcher_text(python, root))
    temporary.chmod(0o755)
    os.replace(temporary, target)
    compile_plugin(root)
    return target


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m agent.cni.launcher DIR...", file=sys.stderr)
        return 2
    for directory in argv:
        print(f"installed {install_launcher(Path(directory))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
