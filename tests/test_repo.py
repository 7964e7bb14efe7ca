"""Repository checks: README and CI agree, and ruff, mypy and import-linter are clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("    bash deploy/setup.sh")]


def test_readme_gives_exactly_two_setup_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert any("--test" in c and "pytest" in c for c in commands)
    assert any("lab demo" in c for c in commands)


def test_ci_runs_readme_test_command() -> None:
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def _check(argv: list[str]) -> None:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def _python_folders(*names: str) -> list[str]:
    return [name for name in names if any((ROOT / name).glob("*.py"))]


def test_ruff_clean() -> None:
    _check([str(BIN / "ruff"), "check",
            *_python_folders("agent", "gossip", "overlay", "underlay", "tests", "bench")])


def test_mypy_clean() -> None:
    _check([str(BIN / "mypy"), *_python_folders("agent", "gossip", "overlay", "underlay", "bench")])


def test_import_layers_hold() -> None:
    _check([str(BIN / "lint-imports")])


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_bench_never_imports_tests() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path)
                                                     if m == "tests" or m.startswith("tests."))
                 for path in (ROOT / "bench").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_test_expects_a_bare_exception() -> None:
    """`pytest.raises(Exception)` passes on any bug; every test names the error it expects."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "raises" and node.args
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id in ("Exception", "BaseException")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_one_source_for_the_namespace_argv_and_the_kernel_vocabulary() -> None:
    """`ip netns exec` / `nsenter --net` are spelled in underlay/netns_exec.py, the zero MAC and
    the VNI bound in underlay/records.py; everything else asks them."""
    spelled = {'"netns", "exec"': "underlay/netns_exec.py", '"--net=': "underlay/netns_exec.py",
               '"00:00:00:00:00:00"': "underlay/records.py", "16_777_215": "underlay/records.py"}
    offenders = []
    for folder in ("agent", "gossip", "overlay", "underlay", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = str(path.relative_to(ROOT))
            if relative == "tests/test_repo.py":
                continue
            text = path.read_text()
            for needle, owner in spelled.items():
                if needle in text and relative != owner and (
                        folder != "tests" or needle.startswith(('"netns"', '"--net'))):
                    offenders.append(f"{relative}: {needle}")
    assert offenders == []
