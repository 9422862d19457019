"""Section 4, cold start: import time of the deployable entries against their SDKs alone.

* Cloud Function: the bundle ``deploy/gcp/deploy.py`` builds (``build()`` into a temporary
  directory), imported in fresh interpreters with ``PYTHONPATH`` at the bundle: ``import
  main`` plus what its first request imports (``bootstrap``: the Firestore and Cloud Tasks
  clients, refluxo's adapters and the app), against functions_framework +
  google.cloud.firestore + google.cloud.tasks_v2 (+ the gRPC transport) alone.
* Worker: the bundle ``deploy/cloudflare/deploy.py`` builds, its ``src/entry.py`` and the app,
  against pydantic and the Python Workers SDK (``workers``, from the workers-runtime-sdk wheel
  ``make setup-cloudflare`` fetches) alone. The SDK imports a few modules that only Pyodide and
  the Workers runtime have (``js``, ``pyodide.ffi``, ...): empty stand-ins take their place, so
  both imports pay the same for them (nothing). Without the wheel, a one-class stand-in for
  ``workers`` is used and the figure says so.

Our share is measured two ways, medians of several fresh processes: with ``-X importtime``
(the self time of every module the SDK-only import does not load, over the total; ours and
the SDK's processes interleaved), and by CPU time (a process imports the SDK, then the entry,
timing each; the entry's part over the whole; CPU rather than wall time, so that other
processes on a shared machine do not count).
The bundles are byte-compiled first, as the SDKs in site-packages are.
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import ROOT, Config, Figure, SectionResult, fmt_us, load_module, median

SECTION = "coldstart"
TITLE = "4. Cold start (imports of the deployable entries vs their SDKs)"
GOAL = 0.20

GCP_OURS = """
import main
from google.cloud import firestore, tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcAsyncIOTransport
import grpc
import refluxo.gcp.scheduler, refluxo.gcp.store
import refluxo.demo
"""
GCP_SDK = """
import functions_framework
from google.cloud import firestore, tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcAsyncIOTransport
import grpc
"""
WORKER_OURS = """
import entry
import refluxo.demo
"""
# pydantic imports lazily: its first model class loads the rest (plugin loader included),
# which any pydantic app pays, so the baseline defines one trivial model.
WORKER_SDK = """
import pydantic, pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError
class _Ready(BaseModel):
    x: int = 0
import workers
"""
WORKERS_STUB = '''"""Stands in for the Python Workers SDK when its wheel is not at hand."""


class WorkerEntrypoint:
    def __init__(self, ctx=None, env=None):
        self.ctx = ctx
        self.env = env
'''
SDK_WHEELS = ROOT / ".tools" / "pyodide-wheels"
# Modules the Workers SDK imports that only Pyodide and the Workers runtime provide. Under
# CPython each is an empty module whose names are classes or no-op functions, enough for the
# SDK's own module bodies (class statements, decorators) to run.
RUNTIME_STUB = '''"""Stands in for a module of Pyodide or the Workers runtime (benchmark only)."""

__version__ = "0"


class JsException(Exception):
    pass


class FetchResponse:
    pass


def _noop(*args, **kwargs):
    return None


def __getattr__(name):
    return type(name, (), {}) if name[:1].isupper() else _noop
'''
# (pyodide/__init__.py is written with its submodules.)
RUNTIME_MODULES = (
    "js",
    "pyodide.ffi",
    "pyodide.http",
    "_cloudflare_compat_flags",
    "_pyodide_entrypoint_helper",
)

# Times ``prelude`` (the SDK's imports, or nothing) and then ``code`` in one fresh process.
_DRIVER = """
import time as _t
_t0, _c0 = _t.perf_counter(), _t.process_time()
{prelude}
_t1, _c1 = _t.perf_counter(), _t.process_time()
{code}
_t2, _c2 = _t.perf_counter(), _t.process_time()
import json as _json, sys as _sys
_core = _sys.modules.get("refluxo.core")
print(_json.dumps({{"prelude_seconds": _t1 - _t0, "prelude_cpu": _c1 - _c0,
                    "seconds": _t2 - _t1, "cpu": _c2 - _c1,
                    "core": getattr(_core, "__file__", None)}}))
"""


FUNCTION_VENV_PYTHON = ROOT / ".tools" / "gcp-function" / "bin" / "python"
"""The venv ``make setup-gcp`` fills with deploy/gcp/requirements.txt alone: what the Cloud
Function installs, without refluxo (which must come from the bundle)."""


def _function_python() -> tuple[str, str]:
    """The interpreter for the Cloud Function's imports, and how it was chosen."""
    if FUNCTION_VENV_PYTHON.exists():
        probe = subprocess.run(
            [str(FUNCTION_VENV_PYTHON), "-c", "import functions_framework, google.cloud.tasks_v2"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if probe.returncode == 0:
            return str(FUNCTION_VENV_PYTHON), (
                "the function's own venv (.tools/gcp-function: deploy/gcp/requirements.txt only)"
            )
    return sys.executable, "the project venv (.tools/gcp-function is missing: make setup-gcp)"


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    ours: str
    sdk: str
    sdk_label: str
    path: list[Path]  # PYTHONPATH
    root: Path  # where refluxo.core must come from
    note: str
    python: str = sys.executable


def _gcp_bundle(out: Path) -> Path:
    deploy: Any = load_module(ROOT / "deploy" / "gcp" / "deploy.py", "_refluxo_bench_gcp_deploy")
    bundle: Path = deploy.build(out, "refluxo.demo")
    return bundle


def _worker_bundle(out: Path) -> Path:
    """The Worker's ``src`` directory, as deploy/cloudflare's build() writes it."""
    deploy: Any = load_module(
        ROOT / "deploy" / "cloudflare" / "deploy.py", "_refluxo_bench_cf_deploy"
    )
    bundle: Path = deploy.build(out, deploy.BundleConfig())
    return bundle / "src"


def _workers_sdk(out: Path) -> tuple[Path, str]:
    """A directory holding the Python Workers SDK over stand-ins for the runtime's modules,
    and the baseline's label; a one-class ``workers`` stand-in when the wheel is missing."""
    out.mkdir(parents=True)
    wheels = sorted(SDK_WHEELS.glob("workers_runtime_sdk-*.whl"))
    if not wheels:
        (out / "workers.py").write_text(WORKERS_STUB)
        return out, "pydantic (+ one trivial model) and a one-class stand-in for `workers`"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(out)
    for name in RUNTIME_MODULES:
        parts = name.split(".")
        if len(parts) == 1:
            (out / f"{name}.py").write_text(RUNTIME_STUB)
        else:
            package = out.joinpath(*parts[:-1])
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").write_text(RUNTIME_STUB)
            (package / f"{parts[-1]}.py").write_text(RUNTIME_STUB)
    version = wheels[-1].name.split("-")[1]
    return out, f"pydantic (+ one trivial model) + the Workers SDK {version}"


def _env(path: list[Path], write_bytecode: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    env.pop("PYTHONSTARTUP", None)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if write_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    # The emulators' variables would not change imports, but keep the children plain.
    for name in ("FIRESTORE_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST"):
        env.pop(name, None)
    return env


@dataclass(frozen=True)
class Child:
    wall: float  # seconds the imports of ``code`` took (after the prelude's)
    cpu: float  # CPU seconds they took
    prelude_wall: float  # the same for the prelude
    prelude_cpu: float
    modules: dict[str, int]  # module -> self microseconds, with -X importtime


def _child(
    code: str, target: Target, *, importtime: bool, bytecode: bool = True, prelude: str = ""
) -> Child:
    argv = [target.python, "-W", "ignore"]
    if importtime:
        argv += ["-X", "importtime"]
    argv += ["-c", _DRIVER.format(prelude=prelude.strip(), code=code.strip())]
    proc = subprocess.run(
        argv,
        cwd=target.path[0],
        env=_env(target.path, bytecode),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"import of {target.label} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    core = report["core"]
    if core is not None and not Path(core).resolve().is_relative_to(target.root.resolve()):
        raise RuntimeError(f"refluxo.core came from {core}, not from the bundle {target.root}")
    modules: dict[str, int] = {}
    if importtime:
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            _, self_us, _, name = (part.strip() for part in line.replace("|", ":", 2).split(":"))
            modules[name.strip()] = modules.get(name.strip(), 0) + int(self_us)
    return Child(
        float(report["seconds"]),
        float(report["cpu"]),
        float(report["prelude_seconds"]),
        float(report["prelude_cpu"]),
        modules,
    )


@dataclass
class Measured:
    ours_wall: list[float]  # the whole entry import, SDK included
    sdk_wall: list[float]  # the SDK's imports, in the same process, before ours
    ours_cpu: list[float]
    sdk_cpu: list[float]
    cpu_shares: list[float]  # per process: (ours - SDK) / ours, in CPU time
    shares: list[float]  # importtime attribution, per run
    refluxo_shares: list[float]  # the same, counting refluxo's own modules (and the entry) only
    ours_total_us: list[int]
    own_modules: dict[str, list[int]]
    nopyc: list[float]


def _ours(name: str) -> bool:
    return name in ("main", "entry") or name == "refluxo" or name.startswith("refluxo.")


def _measure(target: Target, runs: int, *, nopyc: Target | None) -> Measured:
    m = Measured([], [], [], [], [], [], [], [], {}, [])
    sdk_runs: list[dict[str, int]] = []
    ours_runs: list[dict[str, int]] = []
    # Warm the page cache before measuring.
    _child(target.ours, target, importtime=False)
    _child(target.sdk, target, importtime=False)
    for _ in range(runs):
        sdk_runs.append(_child(target.sdk, target, importtime=True).modules)
        ours_runs.append(_child(target.ours, target, importtime=True).modules)
        # The SDK's imports first, then ours on top, timed apart in one process: what
        # ours add is measured against the same process's SDK cost, so a slower or
        # faster process (this machine's CPU time varies by a third from one to the
        # next) moves both.
        both = _child(target.ours, target, importtime=False, prelude=target.sdk)
        m.sdk_wall.append(both.prelude_wall)
        m.sdk_cpu.append(both.prelude_cpu)
        m.ours_wall.append(both.prelude_wall + both.wall)
        m.ours_cpu.append(both.prelude_cpu + both.cpu)
        m.cpu_shares.append(both.cpu / (both.prelude_cpu + both.cpu))
        if nopyc is not None:
            m.nopyc.append(_child(nopyc.ours, nopyc, importtime=False, bytecode=False).cpu)
    sdk_names = set().union(*sdk_runs)
    for mods in ours_runs:
        total = sum(mods.values())
        own = {k: v for k, v in mods.items() if k not in sdk_names}
        m.shares.append(sum(own.values()) / total if total else 0.0)
        mine = sum(v for k, v in mods.items() if _ours(k))
        m.refluxo_shares.append(mine / total if total else 0.0)
        m.ours_total_us.append(total)
        for name, us in own.items():
            m.own_modules.setdefault(name, []).append(us)
    return m


def _figures(target: Target, m: Measured, cfg: Config, cmd: str) -> tuple[list[Figure], str]:
    share = median(m.shares)
    own_ms = median(m.ours_total_us) * share / 1000
    figures = [
        Figure(
            id=f"coldstart.{target.key}.own_share_importtime",
            name=f"Cold start, {target.label}: our share of import time (-X importtime)",
            value=round(share * 100, 1),
            unit="%",
            display=f"{share:.1%} ({own_ms:,.0f} ms of {median(m.ours_total_us) / 1000:,.0f} "
            f"ms self time is in modules {target.sdk_label} does not import; refluxo's own "
            f"modules: {median(m.refluxo_shares):.1%})",
            command=cmd,
            goal=f"< {GOAL:.0%}",
            passed=share < GOAL,
            details={
                "shares": m.shares,
                "refluxo_only_shares": m.refluxo_shares,
                "total_us": m.ours_total_us,
            },
        )
    ]
    ours, sdk = median(m.ours_cpu), median(m.sdk_cpu)
    cpu_share = median(m.cpu_shares)
    figures.append(
        Figure(
            id=f"coldstart.{target.key}.own_share_cpu",
            name=f"Cold start, {target.label}: our share of import CPU time",
            value=round(cpu_share * 100, 1),
            unit="%",
            display=f"{cpu_share:.1%} ({fmt_us(ours)} CPU in all, of which "
            f"{fmt_us(sdk)} for {target.sdk_label}, imported first in the same "
            f"process; wall {fmt_us(median(m.ours_wall))} vs {fmt_us(median(m.sdk_wall))})",
            command=cmd,
            goal=f"< {GOAL:.0%}",
            passed=cpu_share < GOAL,
            details={
                "shares": m.cpu_shares,
                "ours_cpu_s": m.ours_cpu,
                "sdk_cpu_s": m.sdk_cpu,
                "ours_wall_s": m.ours_wall,
                "sdk_wall_s": m.sdk_wall,
            },
        )
    )
    if m.nopyc:
        figures.append(
            Figure(
                id=f"coldstart.{target.key}.without_bytecode",
                name=f"Cold start, {target.label}: import CPU time when the bundle ships no .pyc",
                value=round(median(m.nopyc), 4),
                unit="s",
                display=f"{fmt_us(median(m.nopyc))} "
                f"(vs {fmt_us(median(m.ours_cpu))} byte-compiled)",
                command=cmd,
                details={"seconds": m.nopyc},
            )
        )
    top = sorted(m.own_modules.items(), key=lambda kv: -median(kv[1]))[:8]
    note = (
        f"{target.label}: {target.note} Our heaviest modules (self time, median): "
        + ", ".join(f"{name} {median(v) / 1000:.1f} ms" for name, v in top)
        + "."
    )
    return figures, note


def run(cfg: Config) -> SectionResult:
    cmd = cfg.command_for(SECTION)
    result = SectionResult(SECTION, TITLE)
    runs = cfg.pick(7, 3, 1)
    detailed = cfg.mode != "tiny"
    function_python, function_how = _function_python()
    with tempfile.TemporaryDirectory(prefix="refluxo-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        gcp = _gcp_bundle(tmp / "gcp")
        worker_src = _worker_bundle(tmp / "cloudflare")
        stub, worker_sdk_label = _workers_sdk(tmp / "workers-sdk")
        for directory in (gcp, worker_src, stub):
            compileall.compile_dir(str(directory), quiet=1)
        gcp_raw = _gcp_bundle(tmp / "gcp-source-only")
        worker_raw = _worker_bundle(tmp / "cloudflare-source-only")
        targets = [
            (
                Target(
                    "gcp",
                    "Cloud Function (main.py bundle)",
                    GCP_OURS,
                    GCP_SDK,
                    "functions_framework + firestore + tasks_v2",
                    [gcp],
                    gcp,
                    "bundle from deploy/gcp/deploy.py build(), imported by the Python of "
                    f"{function_how}; `import main` plus the first request's imports "
                    "(bootstrap's clients, refluxo.gcp.store/scheduler, the demo app).",
                    function_python,
                ),
                Target("gcp", "", GCP_OURS, GCP_SDK, "", [gcp_raw], gcp_raw, "", function_python),
            ),
            (
                Target(
                    "worker",
                    "Worker (entry.py bundle, CPython)",
                    WORKER_OURS,
                    WORKER_SDK,
                    worker_sdk_label,
                    [worker_src, stub],
                    worker_src,
                    "sources from deploy/cloudflare/deploy.py build(); `import entry` "
                    "(which imports the SDK's `workers`) plus the demo app, which the "
                    "Worker imports on its first request; the baseline imports pydantic, "
                    "defines one model and imports `workers`. Pyodide's import costs "
                    "differ from CPython's; this is the CPython proxy.",
                ),
                Target(
                    "worker", "", WORKER_OURS, WORKER_SDK, "", [worker_raw, stub], worker_raw, ""
                ),
            ),
        ]
        for target, raw in targets:
            measured = _measure(target, runs, nopyc=raw if detailed else None)
            figures, note = _figures(target, measured, cfg, cmd)
            result.figures += figures
            result.notes.append(note)
    result.notes.append(
        f"Medians of {runs} fresh interpreters per figure (python -W ignore -c ...), ours and "
        "the SDK's interleaved, after one warm-up each. "
        "-X importtime share: the self time of modules the SDK-only import never loads "
        "(refluxo's own, and anything only refluxo pulls in) over the total self time. "
        "CPU share: each process imports the SDK first and then the entry, timing the two "
        "apart (time.process_time, which other processes on the machine do not inflate); "
        "the share is the entry's part over the whole, per process, and its median is "
        "quoted. Measured in one process, the two parts see the same machine state: apart, "
        "the CPU time of one import varies by up to a third from process to process here. "
        "Where the two disagree, the CPU share is the fairer one: -X importtime can only "
        "charge work to the module being imported, so pydantic's one-time setup on the first "
        "model class (which the pydantic baseline also pays, by defining one model at top "
        "level, outside any module) lands in refluxo.core.model's self time."
    )
    return result
