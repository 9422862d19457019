"""Fixtures that run Python Workers in Node Pyodide against Miniflare.

The harness (``harness/harness.mjs``, see ``harness/README.md``) boots Pyodide
once per process, installs the wheels of ``.tools/pyodide-wheels`` and starts
Miniflare with real KV, Queues and D1. Two fixtures drive it:

* ``worker_server(entry_src_dirs, entry_module, ...)``: a Worker served on a
  loopback port (session-scoped; the same arguments give the same server).
* ``run_in_pyodide(pyfile, src_dirs, ...)``: runs one Python program inside
  Pyodide with the bindings in ``harness_env`` and returns its output; fails
  the test if the program fails.

Bindings reach Python through Miniflare's Node proxy: a server inside workerd
keeps every object it hands to Node in a heap, and Node refers to them by
address. Rarely (once in CI; in none of some forty local runs, even with Node
collecting garbage every 20 ms) every binding call of a harness process
starts failing with ``AssertionError: false == true``, the message of an
assertion inside that server (workerd's ``node:assert`` words it so; no
refluxo code raises it), as when an address is no longer in its heap. A
program that failed with that signature in its output is run once more on a
fresh harness (``MINIFLARE_PROXY_LOST``); any other failure, or the same one
twice, fails the test.

Every test under tests/cloudflare/ is marked ``external_service``. When Node,
the harness's node_modules or the wheels are missing the test fails, naming
``make setup-cloudflare``, unless ``REFLUXO_SKIP_CLOUDFLARE=1`` is set, in which
case it is skipped.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

_HERE = Path(__file__).resolve().parent
REPO_ROOT = _HERE.parents[1]
HARNESS_DIR = _HERE / "harness"
HARNESS = HARNESS_DIR / "harness.mjs"
WHEELS_DIR = REPO_ROOT / ".tools" / "pyodide-wheels"
# Pyodide boot + wheel install + Miniflare start take ~4-5 s on this project's
# 2-core machines; the deadline leaves room for a loaded CI machine.
READY_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 300.0
# What a binding call raises once Miniflare's proxy lost its objects (see above).
MINIFLARE_PROXY_LOST = "AssertionError: false == true"

DEFAULT_KV = ("STATE",)
DEFAULT_QUEUES: tuple[str, ...] = ("STEPS",)
DEFAULT_D1 = ("DB",)

collect_ignore = ["toy_worker", "in_pyodide", "harness"]


# ---------------------------------------------------------------- toolchain


def _skip_allowed() -> bool:
    return os.environ.get("REFLUXO_SKIP_CLOUDFLARE", "") == "1"


def _unavailable(reason: str) -> None:
    if _skip_allowed():
        pytest.skip(f"REFLUXO_SKIP_CLOUDFLARE=1 and {reason}")
    pytest.fail(
        f"{reason}\nRun `make setup-cloudflare` (or set REFLUXO_SKIP_CLOUDFLARE=1 to skip).",
        pytrace=False,
    )


def _toolchain_problem() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH (Node >= 20.3 is needed)"
    for package in ("pyodide", "miniflare"):
        if not (HARNESS_DIR / "node_modules" / package / "package.json").is_file():
            return f"npm package {package} is not installed in {HARNESS_DIR}/node_modules"
    wheels = [p.name for p in WHEELS_DIR.glob("*.whl")] if WHEELS_DIR.is_dir() else []
    for prefix in ("pydantic_core-", "pydantic-", "workers_runtime_sdk-"):
        if not any(w.startswith(prefix) for w in wheels):
            return f"no {prefix}*.whl in {WHEELS_DIR}"
    return None


@pytest.fixture(scope="session")
def cloudflare_toolchain() -> Path:
    """Path of harness.mjs, once Node, node_modules and the wheels are known to be there."""
    problem = _toolchain_problem()
    if problem:
        _unavailable(problem)
    return HARNESS


def _binding_args(
    kv: Sequence[str], queues: Sequence[str], d1: Sequence[str], vars: dict[str, str] | None
) -> list[str]:
    args: list[str] = []
    for name in kv:
        args += ["--kv", name]
    for spec in queues:
        args += ["--queue", spec]
    for name in d1:
        args += ["--d1", name]
    for key, value in (vars or {}).items():
        args += ["--var", f"{key}={value}"]
    return args


# ---------------------------------------------------------------- serve


@dataclass
class WorkerServer:
    """A running ``harness.mjs serve``: the Worker answers HTTP on ``url``."""

    url: str
    port: int
    ready: dict[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log(self) -> str:
        """Everything the harness, Miniflare and the Worker wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        proc = self.process
        if proc.poll() is None:
            # Closing stdin is the harness's own stop signal; SIGTERM is the fallback.
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream and not stream.closed:
                stream.close()


def _read_ready_line(stdout: IO[bytes], timeout: float) -> bytes | None:
    """First line of ``stdout``, or None if none came within ``timeout`` seconds."""
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True)
    reader.start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


def _start_server(
    harness: Path, args: list[str], log_dir: Path, timeout: float = READY_TIMEOUT_S
) -> WorkerServer:
    log_path = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=log_dir)[1])
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            ["node", str(harness), "serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=REPO_ROOT,
            start_new_session=True,  # A Ctrl-C of pytest does not hit it mid-teardown.
        )
    assert proc.stdout is not None
    started = time.monotonic()
    line = _read_ready_line(proc.stdout, timeout)
    server = WorkerServer("", 0, {}, log_path, proc)
    try:
        ready = json.loads(line) if line else None
    except json.JSONDecodeError:
        ready = None
    if not ready or not ready.get("ready"):
        server.stop()
        why = (
            f"exited with {proc.returncode}"
            if line is not None
            else f"not ready after {time.monotonic() - started:.0f} s"
        )
        pytest.fail(
            f"harness.mjs serve {' '.join(args)} {why}; its log:\n{server.log()}", pytrace=False
        )
    server.url, server.port, server.ready = ready["url"], ready["port"], ready
    return server


@pytest.fixture(scope="session")
def worker_server(
    cloudflare_toolchain: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerServer]]:
    """Factory: ``worker_server(entry_src_dirs, entry_module, *, kv=, queues=, d1=, vars=)``.

    Serves the ``Default`` WorkerEntrypoint (or ``entry_class``) of ``entry_module``,
    found in the merged ``entry_src_dirs``, with fresh in-memory bindings (by
    default KV ``STATE``, queue ``STEPS`` consumed by the Worker, D1 ``DB``).
    Servers live for the session; the same arguments return the same server.
    """
    log_dir = tmp_path_factory.mktemp("cloudflare-logs")
    servers: dict[tuple[Any, ...], WorkerServer] = {}

    def start(
        entry_src_dirs: Sequence[str | os.PathLike[str]],
        entry_module: str,
        *,
        entry_class: str = "Default",
        kv: Sequence[str] = DEFAULT_KV,
        queues: Sequence[str] = DEFAULT_QUEUES,
        d1: Sequence[str] = DEFAULT_D1,
        vars: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> WorkerServer:
        srcs = tuple(str(Path(d).resolve()) for d in entry_src_dirs)
        key = (srcs, entry_module, entry_class, tuple(kv), tuple(queues), tuple(d1),
               tuple(sorted((vars or {}).items())), tuple(extra_args))  # fmt: skip
        if key not in servers:
            args = [a for d in srcs for a in ("--src", d)]
            args += ["--entry", entry_module, "--entry-class", entry_class]
            args += _binding_args(kv, queues, d1, vars) + list(extra_args)
            servers[key] = _start_server(cloudflare_toolchain, args, log_dir)
        return servers[key]

    try:
        yield start
    finally:
        for server in servers.values():
            server.stop()


# ---------------------------------------------------------------- run


@dataclass
class PyodideRun:
    """Outcome of ``harness.mjs run``."""

    returncode: int
    stdout: str
    stderr: str
    duration_s: float


@pytest.fixture
def run_in_pyodide(cloudflare_toolchain: Path) -> Callable[..., PyodideRun]:
    """Helper: ``run_in_pyodide(pyfile, src_dirs=(), *, kv=, queues=, d1=, vars=, check=True)``.

    Runs ``pyfile`` as ``__main__`` inside Pyodide (top-level ``await`` allowed)
    with the bindings in the module ``harness_env`` (``env``, ``run_tests``,
    ``set_queue_handler``, ``dispatch_fetch``). With ``check`` (the default) a
    non-zero exit fails the test with the program's output.
    """

    def run(
        pyfile: str | os.PathLike[str],
        src_dirs: Sequence[str | os.PathLike[str]] = (),
        *,
        entry_module: str | None = None,
        kv: Sequence[str] = DEFAULT_KV,
        queues: Sequence[str] = DEFAULT_QUEUES,
        d1: Sequence[str] = DEFAULT_D1,
        vars: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        check: bool = True,
        timeout: float = RUN_TIMEOUT_S,
    ) -> PyodideRun:
        args = [a for d in src_dirs for a in ("--src", str(Path(d).resolve()))]
        if entry_module:
            args += ["--entry", entry_module]
        args += _binding_args(kv, queues, d1, vars) + list(extra_args)
        cmd = ["node", str(cloudflare_toolchain), "run", *args, str(Path(pyfile).resolve())]
        result = _run_once(cmd, pyfile, timeout)
        if result.returncode != 0 and MINIFLARE_PROXY_LOST in result.stdout + result.stderr:
            print(
                f"{Path(pyfile).name}: Miniflare's proxy lost its bindings "
                f"({MINIFLARE_PROXY_LOST!r}); running it once more on a fresh harness",
                file=sys.stderr,
            )
            result = _run_once(cmd, pyfile, timeout)
        if check and result.returncode != 0:
            pytest.fail(
                f"{Path(pyfile).name} exited {result.returncode} inside Pyodide\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
                pytrace=False,
            )
        return result

    return run


def _run_once(cmd: list[str], pyfile: str | os.PathLike[str], timeout: float) -> PyodideRun:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=REPO_ROOT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{Path(pyfile).name} did not finish in {timeout:.0f} s inside Pyodide:\n"
            f"{_text(exc.stdout)}\n{_text(exc.stderr)}",
            pytrace=False,
        )
    return PyodideRun(
        proc.returncode, _text(proc.stdout), _text(proc.stderr), time.monotonic() - started
    )


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
