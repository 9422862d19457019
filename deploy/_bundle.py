"""What the per-platform deploy scripts share: the output folder, refluxo's packages, the app.

Standard library only; the scripts import it from the folder above them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_APPS = {
    "refluxo.demo": ROOT / "core" / "refluxo" / "demo",
    "refluxo.examples": ROOT / "core" / "refluxo" / "examples",
}
"""Workflow modules that ship with refluxo: bundled without --app-src."""

Ignore = Callable[[Any, list[str]], set[str]]

MARKER = ".refluxo-bundle"
"""The file that proves a folder is a bundle these scripts wrote, so a rebuild may replace it."""


def prepare_out(out: Path) -> Path:
    """Make ``out`` an empty folder to build a bundle into, and mark it as a bundle.

    ``out`` may be missing, an empty folder, or a bundle built before (it holds
    :data:`MARKER`), which is then replaced whole. Anything else is refused and nothing is
    deleted: a build never removes a file it did not write.

    Raises:
        SystemExit: ``out`` is a file, or a folder holding anything but a marked bundle.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SystemExit(f"deploy: --out {out} is not a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file() or (out / MARKER).is_symlink():
            raise SystemExit(
                f"deploy: --out {out} is not empty and holds no {MARKER} (it is not a bundle "
                "built by this script); name a new or empty folder, nothing was deleted"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "Written by refluxo's deploy script: a rebuild replaces this whole folder.\n"
    )
    return out


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


_LIST_SCHEDULES = """
import json, sys
from refluxo.core.dispatcher import load_workflows
print(json.dumps([
    {"workflow": w.name, "name": n, "cron": s.cron, "timezone": s.timezone}
    for w in load_workflows(sys.argv[1]) for n, s in w.schedules.items()
]))
"""


def list_schedules(bundle: Path, app: str) -> list[dict[str, str]]:
    """The schedules of the bundled workflows: the workflows are imported from the bundle here
    when this Python has refluxo's dependencies, else in a child Python (this script itself
    needs no third-party package). Workflows that cannot be loaded have none: a warning says
    so on stderr (their deployment would then start no scheduled run)."""
    sys.path.insert(0, str(bundle))
    try:
        try:
            from refluxo.core.dispatcher import load_workflows
        except ImportError:
            pass
        else:
            try:
                return [
                    {"workflow": w.name, "name": n, "cron": s.cron, "timezone": s.timezone}
                    for w in load_workflows(app)
                    for n, s in w.schedules.items()
                ]
            except Exception as exc:
                return _no_schedules(app, str(exc))
    finally:
        sys.path.remove(str(bundle))
    env = {**os.environ, "PYTHONPATH": str(bundle)}
    # Popen, not run: this reads the bundle, it is not a cloud command (a dry run runs it too).
    with subprocess.Popen(
        [sys.executable, "-c", _LIST_SCHEDULES, app],
        env=env,
        cwd=bundle,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        out, err = child.communicate(timeout=120)
    if child.returncode != 0:
        return _no_schedules(app, err.strip().splitlines()[-1] if err.strip() else "failed")
    listed: list[dict[str, str]] = json.loads(out)
    return listed


def _no_schedules(app: str, why: str) -> list[dict[str, str]]:
    print(f"deploy: warning: cannot read the schedules of {app!r} ({why})", file=sys.stderr)
    return []
