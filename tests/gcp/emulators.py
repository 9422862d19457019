"""Real Google Cloud emulators (and functions-framework) as test subprocesses.

Each helper starts its server on a free loopback port in a process group of its
own, waits until it answers (polling against a deadline, never a fixed sleep),
and on ``stop()`` kills the whole group: the Firestore launcher is a shell
script that forks ``java``, and killing only the script would leak the JVM.

This module imports the standard library only, so that
``python3 tests/gcp/emulators.py locate-firestore`` works from make before the
project venv has anything in it. gRPC is imported lazily where it is needed.

Where things are looked up (first hit wins):

* Firestore launcher ``cloud_firestore_emulator``: ``$REFLUXO_FIRESTORE_EMULATOR``,
  ``PATH``, the Cloud SDK next to ``gcloud`` (symlink resolved, then
  ``gcloud info --format=value(installation.sdk_root)``), then
  ``dpkg -L google-cloud-cli-firestore-emulator``. Needs ``java`` (or ``$JAVA``).
* ``gcloud-tasks-emulator``: ``$REFLUXO_TASKS_EMULATOR``, the repo's
  ``.tools/tasks-emulator/bin/`` (made by ``make setup-gcp``), then ``PATH``.
* ``functions-framework``: the ``executable`` given, else next to
  ``sys.executable``, then ``PATH``, then ``python -m functions_framework``.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

FIRESTORE_LAUNCHER = "cloud_firestore_emulator"
FIRESTORE_DEB_PACKAGES = (
    "google-cloud-cli-firestore-emulator",
    "google-cloud-sdk-firestore-emulator",
)
FIRESTORE_INSTALL_HINT = (
    "The Firestore emulator launcher `cloud_firestore_emulator` was not found.\n"
    "Install it with one of:\n"
    "  gcloud components install cloud-firestore-emulator\n"
    "  apt-get install google-cloud-cli-firestore-emulator   (Google's Cloud SDK apt repo)\n"
    "It also needs Java (JRE 11+ on PATH, or $JAVA).\n"
    "Or point $REFLUXO_FIRESTORE_EMULATOR at the launcher script."
)

TASKS_EMULATOR = "gcloud-tasks-emulator"
TASKS_EMULATOR_VENV = REPO_ROOT / ".tools" / "tasks-emulator"
TASKS_INSTALL_HINT = (
    "gcloud-tasks-emulator was not found. Run `make setup-gcp` (it installs it into "
    ".tools/tasks-emulator/, away from the project venv because it pins protobuf<5), "
    "or point $REFLUXO_TASKS_EMULATOR at the executable."
)

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05


class EmulatorError(RuntimeError):
    """An emulator or server could not be found, started or stopped."""


class EmulatorNotFound(EmulatorError, FileNotFoundError):
    """The emulator's executable (or its runtime, e.g. Java) is not installed."""


# --------------------------------------------------------------------------- #
# Locating executables
# --------------------------------------------------------------------------- #


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _sdk_launcher(sdk_root: Path) -> Path:
    return sdk_root / "platform" / "cloud-firestore-emulator" / FIRESTORE_LAUNCHER


def _firestore_candidates() -> Iterator[Path]:
    env = os.environ.get("REFLUXO_FIRESTORE_EMULATOR")
    if env:
        yield Path(env)
        return  # An explicit choice is not second-guessed.
    on_path = shutil.which(FIRESTORE_LAUNCHER)
    if on_path:
        yield Path(on_path)
    gcloud = shutil.which("gcloud")
    if gcloud:
        # <sdk_root>/bin/gcloud, usually reached through a symlink: cheap, no subprocess.
        yield _sdk_launcher(Path(gcloud).resolve().parent.parent)
        with tempfile.TemporaryDirectory(prefix="refluxo-gcloud-") as config:
            try:
                out = subprocess.run(
                    [gcloud, "info", "--format=value(installation.sdk_root)"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env={
                        **os.environ,
                        # A throwaway config: no prompts, no writes to ~/.config/gcloud.
                        "CLOUDSDK_CONFIG": config,
                        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
                        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
                    },
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                out = ""
        if out:
            yield _sdk_launcher(Path(out))
    dpkg = shutil.which("dpkg")
    if dpkg:
        for package in FIRESTORE_DEB_PACKAGES:
            try:
                listing = subprocess.run(
                    [dpkg, "-L", package],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                ).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            for line in listing.splitlines():
                if line.endswith("/" + FIRESTORE_LAUNCHER):
                    yield Path(line)


def find_firestore_launcher() -> Path:
    """Return the path of ``cloud_firestore_emulator``, checking Java too.

    Raises:
        EmulatorNotFound: with install instructions.
    """
    tried: list[str] = []
    for candidate in _firestore_candidates():
        if _is_executable(candidate):
            java = os.environ.get("JAVA") or shutil.which("java")
            if not java:
                raise EmulatorNotFound(
                    f"Found {candidate}, but `java` is not on PATH (nor $JAVA set).\n"
                    + FIRESTORE_INSTALL_HINT
                )
            return candidate
        tried.append(str(candidate))
    detail = f"\nLooked at: {', '.join(tried)}" if tried else ""
    raise EmulatorNotFound(FIRESTORE_INSTALL_HINT + detail)


def find_tasks_emulator() -> Path:
    """Return the path of ``gcloud-tasks-emulator``.

    Raises:
        EmulatorNotFound: with install instructions.
    """
    env = os.environ.get("REFLUXO_TASKS_EMULATOR")
    candidates = [Path(env)] if env else []
    if not env:
        candidates.append(TASKS_EMULATOR_VENV / "bin" / TASKS_EMULATOR)
        on_path = shutil.which(TASKS_EMULATOR)
        if on_path:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate
    tried = ", ".join(map(str, candidates))
    raise EmulatorNotFound(f"{TASKS_INSTALL_HINT}\nLooked at: {tried}")


def functions_framework_command() -> list[str]:
    """The command that runs this interpreter's functions-framework."""
    sibling = Path(sys.executable).parent / "functions-framework"
    if _is_executable(sibling):
        return [str(sibling)]
    on_path = shutil.which("functions-framework")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "functions_framework"]


# --------------------------------------------------------------------------- #
# Processes
# --------------------------------------------------------------------------- #


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _group_pids(pgid: int) -> list[int]:
    """Non-zombie processes in process group ``pgid`` (Linux /proc; [] elsewhere)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # Exited while we looked.
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    if Path("/proc").is_dir():
        return bool(_group_pids(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedProcess:
    """A server subprocess in its own process group, output captured to a file.

    Subclasses give the command line and the readiness probe. Usable as a
    context manager; ``start()`` and ``stop()`` may be called again to restart.
    """

    name = "server"
    host = LOOPBACK
    cwd: Path | None = None  # the working directory; None: the test's own
    start_timeout = DEFAULT_START_TIMEOUT
    stop_timeout = DEFAULT_STOP_TIMEOUT

    def __init__(self, port: int | None = None, env: Mapping[str, str] | None = None) -> None:
        self._fixed_port = port
        self.port = port or 0
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None

    # -- for subclasses ---------------------------------------------------- #

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> bool:
        """True once the server answers; called repeatedly until the deadline."""
        raise NotImplementedError

    def process_env(self) -> dict[str, str]:
        return {**os.environ, **self._extra_env}

    # -- public ------------------------------------------------------------ #

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the process and wait until ``probe()`` passes.

        Raises:
            EmulatorNotFound: the executable is missing.
            EmulatorError: it exited or did not answer in time (with its output).
        """
        if self._proc is not None:
            raise EmulatorError(f"{self.name} is already running (pid {self._proc.pid})")
        # A port picked by free_port() can be taken before the server binds it;
        # only that case is retried, with a new port.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            try:
                self._spawn()
                self._wait_ready()
                return
            except EmulatorError as exc:
                output = self.output()
                self.stop()
                if attempt + 1 < attempts and _looks_like_port_clash(output):
                    continue
                raise exc from None
            except BaseException:  # e.g. KeyboardInterrupt while waiting: no orphans
                self.stop()
                raise

    def stop(self) -> None:
        """Kill the whole process group and wait until none of it is left.

        SIGTERM first, SIGKILL after ``stop_timeout``. Idempotent.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            self._before_stop(proc)
            pgid = proc.pid  # start_new_session=True: the leader's pid is the pgid.
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline:
                proc.poll()
                if proc.returncode is not None and not _group_alive(pgid):
                    break
                time.sleep(_POLL_INTERVAL)
            else:
                _signal_group(pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.stop_timeout)
                deadline = time.monotonic() + self.stop_timeout
                while _group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(_POLL_INTERVAL)
            if proc.returncode is None:
                proc.wait(timeout=self.stop_timeout)
            if _group_alive(pgid):
                raise EmulatorError(f"{self.name}: process group {pgid} survived SIGKILL")
        self._close_log()

    def _before_stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Hook run before the group is signalled."""

    def restart(self) -> None:
        """Stop, then start again on the same port (clients keep their address)."""
        port = self.port
        self.stop()
        saved, self._fixed_port = self._fixed_port, port
        try:
            self.start()
        finally:
            self._fixed_port = saved

    def output(self, max_lines: int = 60) -> str:
        """The last ``max_lines`` lines the process wrote (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        with self._log_path.open("rb") as fh:
            tail = collections.deque(fh, maxlen=max_lines)
        return b"".join(tail).decode("utf-8", "replace")

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self._proc else "stopped"
        return f"<{type(self).__name__} {self.address} {state}>"

    # -- internals --------------------------------------------------------- #

    def _spawn(self) -> None:
        argv = self.command()
        self._close_log()
        self._log_dir = tempfile.TemporaryDirectory(prefix=f"refluxo-{self.name}-")
        self._log_path = Path(self._log_dir.name) / "output.log"
        # A file, not a pipe: nobody drains a pipe while the tests run, and a
        # full pipe would block the server.
        self._log = self._log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.process_env(),
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise EmulatorNotFound(f"{self.name}: cannot run {argv[0]}: {exc}") from exc

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmulatorError(
                    f"{self.name} exited with code {code} before it was ready.\n"
                    f"Command: {' '.join(self.command())}\n"
                    f"--- output (tail) ---\n{self.output()}"
                )
            if self.probe():
                return
            if time.monotonic() > deadline:
                raise EmulatorError(
                    f"{self.name} did not become ready on {self.address} within "
                    f"{self.start_timeout:.0f}s.\n"
                    f"Command: {' '.join(self.command())}\n"
                    f"--- output (tail) ---\n{self.output()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
            self._log_path = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _looks_like_port_clash(output: str) -> bool:
    text = output.lower()
    return any(
        needle in text for needle in ("address already in use", "bindexception", "failed to bind")
    )


def _http_status(url: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) of one request, or None if nothing answered."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return None


# --------------------------------------------------------------------------- #
# Firestore
# --------------------------------------------------------------------------- #


class FirestoreEmulator(ManagedProcess):
    """The official Cloud Firestore emulator (Java), native mode.

    Clients find it through ``FIRESTORE_EMULATOR_HOST`` (see :attr:`env`);
    google-cloud-firestore reads that variable once, in the client's constructor.
    """

    name = "firestore-emulator"

    def __init__(
        self,
        project: str = "refluxo-test",
        port: int | None = None,
        launcher: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port=port, env=env)
        self.project = project
        self._launcher = Path(launcher) if launcher else None

    @property
    def launcher(self) -> Path:
        if self._launcher is None:
            self._launcher = find_firestore_launcher()
        return self._launcher

    @property
    def env(self) -> dict[str, str]:
        """Variables that point clients at this emulator."""
        return {
            "FIRESTORE_EMULATOR_HOST": self.address,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        return [str(self.launcher), f"--host={self.host}", f"--port={self.port}"]

    def probe(self) -> bool:
        answer = _http_status(self.base_url + "/")
        return answer is not None and answer[0] == 200

    def _before_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # Stop the JVM first, so that the launcher script (which waits for it)
        # reaps it. Signalling the group at once lets the script die first and
        # leaves the JVM to init, which shows as a zombie until init reaps it.
        children = [pid for pid in _group_pids(proc.pid) if pid != proc.pid]
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and any(pid in _group_pids(proc.pid) for pid in children):
            time.sleep(_POLL_INTERVAL)

    def reset(self, project: str | None = None) -> None:
        """Delete every document of ``project``'s default database."""
        url = (
            f"{self.base_url}/emulator/v1/projects/{project or self.project}"
            "/databases/(default)/documents"
        )
        answer = _http_status(url, method="DELETE", timeout=10.0)
        if answer is None or answer[0] != 200:
            raise EmulatorError(
                f"Firestore reset failed: {answer!r}\n--- output (tail) ---\n{self.output()}"
            )


# --------------------------------------------------------------------------- #
# Cloud Tasks
# --------------------------------------------------------------------------- #


class CloudTasksEmulator(ManagedProcess):
    """``gcloud-tasks-emulator`` (PyPI) with one queue created at start.

    It speaks gRPC only and has no emulator variable in the client library:
    build the client on ``grpc.aio.insecure_channel(emulator.address)``.
    It binds all interfaces whatever host is asked; we talk to it on loopback.

    ``reset()`` restarts the process (same port, ~0.5 s). PurgeQueue usually
    works, but in 0.6.2 it races with the queue's delivery thread: a purge in
    the middle of a delivery pass makes that thread raise NotFound for the
    vanished task and die, and delivery on that queue stops for good.
    """

    name = "tasks-emulator"
    # The emulator re-reads its queue every 0.1 s; a task that keeps failing is
    # re-sent that often, so the default bounds retries instead of looping forever.
    DEFAULT_MAX_RETRIES = 3

    def __init__(
        self,
        queue_path: str = "projects/refluxo-test/locations/us-central1/queues/refluxo",
        max_retries: int = DEFAULT_MAX_RETRIES,
        port: int | None = None,
        executable: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port=port, env=env)
        parts = queue_path.split("/")
        if len(parts) != 6 or parts[0::2] != ["projects", "locations", "queues"]:
            raise ValueError(
                f"queue_path must be projects/P/locations/L/queues/Q, got {queue_path!r}"
            )
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0: without it the emulator retries forever")
        self.queue_path = queue_path
        self.project, self.location, self.queue = parts[1], parts[3], parts[5]
        self.max_retries = max_retries
        self._executable = Path(executable) if executable else None

    @property
    def executable(self) -> Path:
        if self._executable is None:
            self._executable = find_tasks_emulator()
        return self._executable

    @property
    def location_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def env(self) -> dict[str, str]:
        """Variables for code under test.

        ``CLOUD_TASKS_EMULATOR_HOST`` is this project's convention, not the
        client library's: an adapter must build its own insecure channel.
        """
        return {
            "CLOUD_TASKS_EMULATOR_HOST": self.address,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

    def command(self) -> list[str]:
        return [
            str(self.executable),
            "start",
            "-p",
            str(self.port),
            "-d",
            self.queue_path,
            "-r",
            str(self.max_retries),
        ]

    def process_env(self) -> dict[str, str]:
        env = super().process_env()
        # Its old google-api-core warns about Python versions on every import.
        env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
        env["PYTHONUNBUFFERED"] = "1"  # So output() shows the log as it happens.
        return env

    def probe(self) -> bool:
        output = self.output(200)
        if "Traceback" in output:
            # e.g. "Failed to bind" in its API thread: the process lives on, serving nothing.
            raise EmulatorError(
                f"{self.name} failed while starting on {self.address}.\n"
                f"--- output (tail) ---\n{output}"
            )
        # 0.6.2 logs this right after add_insecure_port() succeeded and before
        # server.start(); the TCP check covers the rest.
        return "[API] Starting API server" in output and _tcp_open(self.host, self.port)

    def reset(self) -> None:
        """Drop every task and queue but the default one, by restarting."""
        self.restart()


# --------------------------------------------------------------------------- #
# functions-framework
# --------------------------------------------------------------------------- #


class FunctionsFrameworkServer(ManagedProcess):
    """``functions-framework --target T --source FILE`` on loopback.

    Readiness is probed with ``GET /robots.txt``: the framework answers it
    itself (404) without calling the target, so the probe has no side effects.

    ``executable`` picks another installation's ``functions-framework`` (e.g.
    a venv holding only a deployment's requirements); ``cwd`` is the working
    directory (Cloud Functions runs in the source directory).
    """

    name = "functions-framework"
    start_timeout = 30.0

    def __init__(
        self,
        target: str,
        source: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        signature_type: str | None = None,
        asgi: bool = False,
        extra_args: Sequence[str] = (),
        executable: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(port=port, env=env)
        self.target = target
        self.executable = Path(executable) if executable else None
        self.cwd = Path(cwd) if cwd else None
        self.source = Path(source)
        self.signature_type = signature_type
        self.asgi = asgi
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        launcher = [str(self.executable)] if self.executable else functions_framework_command()
        argv = [
            *launcher,
            "--target",
            self.target,
            "--source",
            str(self.source),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.signature_type:
            argv += ["--signature-type", self.signature_type]
        if self.asgi:
            argv.append("--asgi")
        return argv + self.extra_args

    def process_env(self) -> dict[str, str]:
        env = super().process_env()
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> None:
        if not self.source.is_file():
            raise EmulatorError(f"functions-framework source {self.source} does not exist")
        if self.executable is not None and not _is_executable(self.executable):
            raise EmulatorNotFound(f"{self.name}: {self.executable} is not an executable")
        super().start()

    def probe(self) -> bool:
        answer = _http_status(self.url + "/robots.txt")
        return answer is not None


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = _POLL_INTERVAL) -> Any:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def _main(argv: Sequence[str]) -> int:
    if list(argv) == ["locate-firestore"]:
        try:
            print(find_firestore_launcher())
        except EmulatorNotFound as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if list(argv) == ["locate-tasks"]:
        try:
            print(find_tasks_emulator())
        except EmulatorNotFound as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    print("usage: emulators.py locate-firestore|locate-tasks", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
