"""What the per-platform deploy scripts share: copying refluxo's packages and the workflows' code.

Standard library only; the scripts import it from the folder above them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_APPS = {"refluxo.demo": ROOT / "core" / "refluxo" / "demo"}
"""Workflow modules that ship with refluxo: bundled without --app-src."""

Ignore = Callable[[Any, list[str]], set[str]]


def copy_packages(dest: Path, packages: Mapping[str, Path], ignore: Ignore) -> None:
    """Copy each package folder to ``dest / <its path in the bundle>``."""
    for where, package in packages.items():
        shutil.copytree(package, dest / where, ignore=ignore)


def copy_app(dest: Path, app: str, app_src: Path | None, ignore: Ignore) -> None:
    """Copy the code of the workflows module ``app`` (``module[:attribute]``) into ``dest``.

    A built-in module is found in the repository; any other needs ``app_src``, a package folder
    or a single file, copied under its own name.
    """
    module = app.partition(":")[0]
    if module in BUILTIN_APPS:
        shutil.copytree(BUILTIN_APPS[module], dest / module.replace(".", "/"), ignore=ignore)
    elif app_src is not None:
        if app_src.is_dir():
            shutil.copytree(app_src, dest / app_src.name, ignore=ignore)
        else:
            shutil.copy2(app_src, dest / app_src.name)
    else:
        raise SystemExit(f"deploy: --app-src is needed to bundle the code of {module!r}")
