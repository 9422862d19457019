"""What the wheel ships and how an adapter is wired into pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_adapter_is_installed_shipped_and_type_checked() -> None:
    build = PYPROJECT["tool"]["hatch"]["build"]
    wheel = build["targets"]["wheel"]
    mypy = PYPROJECT["tool"]["mypy"]
    roots = sorted(p.parents[2] for p in REPO.glob("adapters/*/refluxo/*/__init__.py"))
    assert roots, "no adapter found under adapters/"
    for root in roots:
        rel = root.relative_to(REPO).as_posix()
        (name,) = [p.name for p in (root / "refluxo").iterdir() if p.is_dir()]
        assert rel in build["dev-mode-dirs"], f"{rel}: add it to dev-mode-dirs"
        assert rel in wheel["sources"], f"{rel}: add it to the wheel's sources"
        assert (root / "refluxo" / name / "py.typed").is_file(), f"{rel}: ship a py.typed"
        assert rel in mypy["mypy_path"].split(":"), f"{rel}: add it to mypy_path"
    assert "adapters" in wheel["only-include"] and "adapters" in mypy["files"]


def test_the_wheel_ships_refluxo_testing() -> None:
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "core/refluxo" in wheel["only-include"]
    assert (REPO / "core" / "refluxo" / "testing" / "__init__.py").is_file()


def test_importing_refluxo_testing_needs_no_pytest() -> None:
    code = (
        "import sys, refluxo.testing\n"
        "assert 'pytest' not in sys.modules, 'refluxo.testing imported pytest'\n"
        "assert refluxo.testing.FakeClock()() > 0\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pytest" in PYPROJECT["project"]["optional-dependencies"]["testing"][0]
