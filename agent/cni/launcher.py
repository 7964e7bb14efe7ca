"""The executable runtimes find as CNI plugin type `vxmesh`: a compiled front, or a Python script.

Owns: building and installing the plugin into CNI bin dirs. Where a C compiler is found
(`cc`), `vxmesh` is `agent/cni/front.c` compiled for this tree: it hands each run to the agent
over its socket (`POST /v1/cni/exec`, where `agent.cni.plugin.run` does the work) and execs the
Python plugin for whatever it cannot do itself (agent down, VERSION, a configuration it
cannot read); an interpreter's start, ~15 ms of CPU, is then off the path of every ADD and DEL
while the agent runs. Without a compiler, `vxmesh` is the Python script itself.
The script (and the front's fall-back) runs Python with `-I -S` (isolated: no `PYTHON*`
variables of the runtime's environment, no site-packages, so the plugin can load nothing but
the standard library), puts this source tree on `sys.path` and calls
`agent.cni.plugin.main`; no shell runs in between.
The interpreter is the system's `/usr/bin/python3` when it is the same Python version as this
tree's venv (Debian's is built with profile-guided optimisation and a static libpython: it
starts about a third faster than a pyenv build; the byte-code caches `compile_plugin` writes
fit both), else the venv's own.
`deploy/setup.sh` runs `python -m agent.cni.launcher /usr/lib/cni /opt/cni/bin`; the lab and
the tests install it into directories of their own.

Standard library only.
"""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

PLUGIN_NAME = "vxmesh"
SYSTEM_PYTHON = "/usr/bin/python3"
SHEBANG_LIMIT = 127  # bytes of a `#!` line every Linux kernel reads whole


def source_root() -> Path:
    """The directory holding the `agent` package this launcher should run."""
    return Path(__file__).resolve().parents[2]


def plugin_python() -> str:
    """The interpreter the launcher runs: the system's python3 if it is this Python version,
    else this venv's."""
    if os.path.exists(SYSTEM_PYTHON):
        probe = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c",
                                "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            return SYSTEM_PYTHON
    return sys.executable


def launcher_text(python: str | None = None, root: Path | None = None) -> str:
    python = python or plugin_python()
    root = root or source_root()
    shebang = f"#!{python} -IS"
    if len(shebang.encode()) > SHEBANG_LIMIT or any(c.isspace() for c in python):
        raise ValueError(f"python={python!r}: not usable in a #! line (over "
                         f"{SHEBANG_LIMIT} bytes or with blanks)")
    return (f"{shebang}\n"
            "# vxmesh CNI plugin: agent/cni/plugin.py on the standard library only (-I -S).\n"
            f"{boot_code(root)}\n")


def boot_code(root: Path) -> str:
    """The Python that runs the plugin from the source tree `root`."""
    return (f"import sys; sys.path.insert(0, {str(root)!r}); "
            "from agent.cni.plugin import main; main()")


def _c_string(text: str) -> str:
    if any(ord(c) < 0x20 for c in text):
        raise ValueError(f"{text!r}: control characters do not go into the compiled plugin")
    return json.dumps(text, ensure_ascii=False)  # a JSON string of printable text is C too


def build_front(target: Path, python: str | None = None, root: Path | None = None) -> bool:
    """Compile `agent/cni/front.c` for this tree into `target`; False without a compiler."""
    compiler = shutil.which("cc")
    if compiler is None:
        return False
    python = python or plugin_python()
    root = root or source_root()
    done = subprocess.run(
        [compiler, "-O2", "-o", str(target), str(root / "agent" / "cni" / "front.c"),
         f"-DVXMESH_PYTHON={_c_string(python)}", f"-DVXMESH_BOOT={_c_string(boot_code(root))}"],
        capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"compiling agent/cni/front.c failed: {done.stderr.strip()}")
    return True


def compile_plugin(root: Path | None = None) -> None:
    """Byte-compile the plugin's modules, so that a start never compiles them (even where
    PYTHONDONTWRITEBYTECODE keeps python from writing its cache)."""
    root = root or source_root()
    for source in [root / "agent" / "__init__.py", root / "agent" / "unix_http.py",
                   *sorted((root / "agent" / "cni").glob("*.py"))]:
        py_compile.compile(str(source), doraise=True)


def install_launcher(directory: Path, python: str | None = None,
                     root: Path | None = None) -> Path:
    """Write the plugin as `directory/vxmesh` (mode 0755: the compiled front, else the Python
    script), atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PLUGIN_NAME
    temporary = directory / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
    if not build_front(temporary, python, root):
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
