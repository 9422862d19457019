"""``refluxo``: run the embedded runtime and talk to any refluxo deployment.

    refluxo dev [--app refluxo.demo] [--db .refluxo/dev.db | --postgres URL] [--port 8000]
                [--lease 60] [--allowed-host H]
    refluxo worker --postgres URL [--app refluxo.demo] [--concurrency 8] [--lease 60]
    refluxo start WORKFLOW [--id ID] [--input JSON]
    refluxo event RUN_ID [--payload JSON] [--name NAME] [--id EVENT_ID]
    refluxo cancel RUN_ID [--reason TEXT]
    refluxo runs [--status failed] [--workflow W] [--limit N] [--all]
    refluxo inspect RUN_ID
    refluxo retry RUN_ID [--reason TEXT] [--force]
    refluxo rerun RUN_ID --from NODE [--input JSON] [--id NEW_ID]
    refluxo move RUN_ID --from URL --to URL
    refluxo replay FILE.json --app MODULE [--from NODE] [--payload JSON]
    refluxo graph WORKFLOW [--app refluxo.demo | --url URL]
    refluxo smoke --url URL [--token T] [--timeout 300]
    refluxo ui --url URL [--token T] [--port 8001]

The client commands call the HTTP API at ``--url`` (default ``$REFLUXO_URL`` or
http://127.0.0.1:8000) with ``--token`` (default ``$REFLUXO_TOKEN``). ``--url``, ``--token``
and ``--json`` may be given before or after the command; every read command prints JSON
with ``--json``. Errors are one line on stderr: exit status 1 for an error the API or the
network answered, 2 for a usage error.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from refluxo.core import Snapshot
from refluxo.core.errors import DefinitionError, RefluxoError
from refluxo.core.logs import configure_logging
from refluxo.core.model import WorkflowDefinition
from refluxo.core.timeline import render_timeline, to_mermaid

from .client import ApiError, Client
from .scheduler import DEFAULT_LEASE_MS

DEFAULT_URL = "http://127.0.0.1:8000"

_F = TypeVar("_F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error the CLI reports as one line, with exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        # click >= 8.4 declares exit_code a ClassVar; this instance's own value overrides it.
        object.__setattr__(self, "exit_code", exit_code)


def _json_arg(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"not valid JSON: {text!r} ({exc})", 2) from None


_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F))


def _unsafe(char: str) -> bool:
    # Cc: C0 and C1 controls (ESC starts every terminal escape sequence); Zl/Zp: line breaks a
    # terminal may honour; bidi overrides reorder what is shown.
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), never acted on.

    With ``keep_newlines`` the line breaks the CLI itself lays out are kept; strings that came
    from a run are escaped without it, so a reason cannot forge a line of the timeline.
    """
    out = []
    for char in text:
        if keep_newlines and char == "\n":
            out.append(char)
        elif _unsafe(char):
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def _neutralised(value: Any) -> Any:
    """A JSON value with every string (keys too) passed through :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_neutralised(item) for item in value]
    if isinstance(value, dict):
        return {printable(str(k)): _neutralised(v) for k, v in value.items()}
    return value


def _say(text: str, *, file: TextIO | None = None) -> None:
    """Print what the CLI laid out: its newlines kept, every other control character escaped."""
    print(printable(text, keep_newlines=True), file=file or sys.stdout)


def _print(value: Any) -> None:
    _say(json.dumps(value, indent=2))


def _importable_here() -> None:
    """Let ``--app mymod`` find a module in the current folder, as ``python -m`` would."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def _load(app: str) -> list[Any]:
    from refluxo.core.dispatcher import load_workflows

    _importable_here()
    try:
        return load_workflows(app)
    except DefinitionError as exc:
        hint = ""
        if "cannot import" in str(exc):
            hint = (
                "; run it from the folder that holds the module, or add that folder to PYTHONPATH"
            )
        raise CliError(f"{exc}{hint}", 2) from None


# --- options every command takes, before or after its name ------------------------------


def _global_options(command: _F) -> _F:
    """``--url``, ``--token`` and ``--json`` on a command; what it is given wins over what the
    group was given (``refluxo --url A runs`` and ``refluxo runs --url A`` are the same)."""
    options = [
        click.option(
            "--url",
            "url_here",
            default=None,
            metavar="URL",
            help="the deployment's HTTP API (default $REFLUXO_URL or " + DEFAULT_URL + ")",
        ),
        click.option(
            "--token",
            "token_here",
            default=None,
            metavar="TOKEN",
            help="the API's bearer token (default $REFLUXO_TOKEN)",
        ),
        click.option(
            "--json", "json_here", is_flag=True, default=False, help="print JSON for scripts"
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class Settings:
    def __init__(self, url: str, token: str | None, as_json: bool) -> None:
        self.url = url
        self.token = token
        self.as_json = as_json

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.url, self.token, timeout=timeout)


def _settings(kwargs: dict[str, Any]) -> Settings:
    root = click.get_current_context().find_root().params
    url = kwargs.pop("url_here", None) or root.get("url") or DEFAULT_URL
    token = kwargs.pop("token_here", None) or root.get("token")
    as_json = bool(kwargs.pop("json_here", False) or root.get("as_json"))
    return Settings(url, token, as_json)


def _command(name: str, **attrs: Any) -> Callable[[_F], _F]:
    """A subcommand of :data:`cli` with the global options, handed a :class:`Settings`."""

    def wrap(function: _F) -> _F:
        @functools.wraps(function)
        def run(**kwargs: Any) -> Any:
            settings = _settings(kwargs)
            try:
                return function(settings, **kwargs)
            except ApiError as exc:
                raise CliError(printable(str(exc))) from None
            except OSError as exc:
                raise CliError(f"cannot reach {settings.url}: {printable(str(exc))}") from None

        return cli.command(name, **attrs)(_global_options(run))  # type: ignore[return-value]

    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url",
    envvar="REFLUXO_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="the deployment's HTTP API ($REFLUXO_URL)",
)
@click.option("--token", envvar="REFLUXO_TOKEN", help="the API's bearer token ($REFLUXO_TOKEN)")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts (read commands)")
def cli(url: str, token: str | None, as_json: bool) -> None:
    """Run the embedded runtime, and operate runs on any refluxo deployment."""


# --- the embedded runtime ---------------------------------------------------------------


def _seconds(value: float) -> float:
    if not 0 < value < float("inf"):
        raise click.BadParameter(f"must be a positive number of seconds: {value!r}")
    return value


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _postgres_runtime(
    workflows: list[Any], url: str, token: str | None, concurrency: int, lease: float
) -> Any:
    try:
        from refluxo.postgres.runtime import PostgresRuntime
    except ImportError as exc:
        raise CliError(
            f"--postgres needs the postgres extra (pip install 'refluxo[postgres]'): {exc}"
        ) from None
    return PostgresRuntime(
        workflows,
        url=url,
        api_token=token,
        globals=_json_arg(os.environ.get("REFLUXO_GLOBALS")),
        concurrency=concurrency,
        lease_ms=round(lease * 1000),
    )


def _lease_option(command: _F) -> _F:
    return click.option(
        "--lease",
        type=float,
        default=DEFAULT_LEASE_MS / 1000,
        show_default=True,
        metavar="SECONDS",
        callback=lambda ctx, param, value: _seconds(value),
        help="how long a step's message stays leased to a process that stopped renewing it "
        "(one that died) before another takes it over; with SQLite, a restart on the same "
        "host takes back its dead predecessor's leases at once",
    )(command)


def _log_option(command: _F) -> _F:
    return click.option(
        "--log",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="the format of the log, one line per step",
    )(command)


def _app_option(command: _F) -> _F:
    return click.option(
        "--app",
        default=lambda: os.environ.get("REFLUXO_APP", "refluxo.demo"),
        show_default="$REFLUXO_APP or refluxo.demo",
        help="the module (or module:attribute) that names the workflows; found in the "
        "current folder too",
    )(command)


@_command("dev", help="Serve the HTTP API with SQLite (or PostgreSQL) and its scheduler.")
@click.option(
    "--app",
    default=lambda: os.environ.get("REFLUXO_APP", "refluxo.demo"),
    show_default="$REFLUXO_APP or refluxo.demo",
    help="the module (or module:attribute) that names the workflows; found in the "
    "current folder too",
)
@click.option("--db", default=".refluxo/dev.db", show_default=True, help="the SQLite file")
@click.option(
    "--postgres",
    metavar="URL",
    default=lambda: os.environ.get("REFLUXO_POSTGRES"),
    help="keep runs and messages in this PostgreSQL database instead of --db "
    "(the postgres extra); `refluxo worker` processes may share it",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option("--port", type=int, default=8000, show_default=True, help="the port to listen on")
@click.option(
    "--allowed-host",
    multiple=True,
    help="a Host name to answer (repeatable; default: the --host address, and the "
    "loopback names when it is a loopback address)",
)
@click.option(
    "--log",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="the format of the log, one line per step",
)
@click.option(
    "--lease",
    type=float,
    default=DEFAULT_LEASE_MS / 1000,
    show_default=True,
    metavar="SECONDS",
    callback=lambda ctx, param, value: _seconds(value),
    help="how long a step's message stays leased to a process that stopped renewing it "
    "(one that died) before another takes it over; a restart on the same host takes "
    "back its dead predecessor's leases at once",
)
def dev(
    settings: Settings,
    app: str,
    db: str,
    postgres: str | None,
    host: str,
    port: int,
    allowed_host: tuple[str, ...],
    log: str,
    lease: float,
) -> None:
    workflows = _load(app)
    where = "PostgreSQL" if postgres else os.path.abspath(db)
    allowed = list(allowed_host)
    asyncio.run(
        _dev(settings, workflows, app, db, postgres, where, host, port, allowed, log, lease)
    )


async def _dev(
    settings: Settings,
    workflows: list[Any],
    app: str,
    db: str,
    postgres: str | None,
    where: str,
    host: str,
    port: int,
    allowed_hosts: list[str],
    log: str,
    lease: float,
) -> None:
    from .runtime import LocalRuntime

    configure_logging(log)
    if postgres:
        runtime: Any = _postgres_runtime(workflows, postgres, settings.token, 8, lease)
    else:
        runtime = LocalRuntime(
            workflows,
            db_path=db,
            api_token=settings.token,
            globals=_json_arg(os.environ.get("REFLUXO_GLOBALS")),
            lease_ms=round(lease * 1000),
        )
    async with runtime:
        server = await runtime.serve(
            host, port, allowed_hosts=allowed_hosts or None, dashboard=True
        )
        names = ", ".join(runtime.dispatcher.workflows)
        state = "PostgreSQL" if postgres else db
        _say(f"refluxo dev: serving {names} on {server.url} (state in {state})")
        _say(f"  API       {server.url}  (OpenAPI: {server.url}/openapi.json)")
        _say(f"  dashboard {server.url}/ui/")
        _say(f"  database  {where}")
        _say(f"  apps      {app}: {names}")
        _say("  steps     one log line per step below (--log json for JSON)")
        sys.stdout.flush()
        await _until_signalled()
        print("refluxo dev: stopping", flush=True)


@_command("worker", help="Run steps from a PostgreSQL database (any number, on any machine).")
@_app_option
@click.option(
    "--postgres",
    metavar="URL",
    default=lambda: os.environ.get("REFLUXO_POSTGRES"),
    help="the database (default: $REFLUXO_POSTGRES)",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="steps at once"
)
@_log_option
@_lease_option
def worker(
    settings: Settings, app: str, postgres: str | None, concurrency: int, log: str, lease: float
) -> None:
    if not postgres:
        raise click.UsageError("worker needs --postgres URL (or $REFLUXO_POSTGRES)")
    workflows = _load(app)
    asyncio.run(_worker(settings, workflows, postgres, concurrency, log, lease))


async def _worker(
    settings: Settings,
    workflows: list[Any],
    postgres: str,
    concurrency: int,
    log: str,
    lease: float,
) -> None:
    configure_logging(log)
    runtime = _postgres_runtime(workflows, postgres, settings.token, concurrency, lease)
    async with runtime:
        names = ", ".join(runtime.dispatcher.workflows)
        _say(f"refluxo worker: running {names}, {concurrency} steps at a time")
        sys.stdout.flush()
        await _until_signalled()
        print("refluxo worker: stopping", flush=True)


# --- writes -------------------------------------------------------------------------------


@_command("start", help="Start a run of WORKFLOW.")
@click.argument("workflow")
@click.option("--id", "run_id", help="the run's id (starting it again starts nothing)")
@click.option("--input", "input_", metavar="JSON", help="the run's input, as JSON")
def start(settings: Settings, workflow: str, run_id: str | None, input_: str | None) -> None:
    _print(settings.client().start(workflow, run_id, _json_arg(input_)))


@_command("event", help="Send an event to a run.")
@click.argument("run_id")
@click.option("--payload", default="null", metavar="JSON", help="the event's data, as JSON")
@click.option("--name", help="the event's name (what a wait listens for)")
@click.option("--id", "event_id", help="an id that makes sending it again safe")
def event(
    settings: Settings, run_id: str, payload: str, name: str | None, event_id: str | None
) -> None:
    _print(settings.client().event(run_id, _json_arg(payload), name, event_id))


@_command("cancel", help="Cancel a run: it ends failed, with the reason.")
@click.argument("run_id")
@click.option("--reason", help="why, kept in the run's metadata")
def cancel(settings: Settings, run_id: str, reason: str | None) -> None:
    _print(settings.client().cancel(run_id, reason))


@_command("retry", help="Continue a failed run from the node that failed, attempts reset.")
@click.argument("run_id")
@click.option("--reason", help="why, recorded in the run's metadata with who and when")
@click.option("--force", is_flag=True, help="retry a cancelled run too")
def retry(settings: Settings, run_id: str, reason: str | None, force: bool) -> None:
    _print(settings.client().retry(run_id, reason, force))


@_command("rerun", help="Start a new run at a node, with RUN_ID's results before it.")
@click.argument("run_id")
@click.option("--from", "from_node", required=True, metavar="NODE", help="the node to start at")
@click.option("--input", "input_", metavar="JSON", help="given to that node as a run's input")
@click.option("--id", "new_id", help="the new run's id (default: a random one)")
def rerun(
    settings: Settings, run_id: str, from_node: str, input_: str | None, new_id: str | None
) -> None:
    _print(settings.client().rerun(run_id, from_node, _json_arg(input_), new_id))


@_command("move", help="Move a run that has not finished to another deployment of its workflow.")
@click.argument("run_id")
@click.option("--from", "source", required=True, metavar="URL", help="where the run is now")
@click.option("--to", "target", required=True, metavar="URL", help="where it goes")
@click.option(
    "--to-token", help="the target's bearer token (default: --token, for both deployments)"
)
def move(settings: Settings, run_id: str, source: str, target: str, to_token: str | None) -> None:
    here = Client(source, settings.token)
    there = Client(target, to_token or settings.token)
    snapshot = here.get(run_id)
    name = (snapshot.get("definition") or {}).get("name")
    if snapshot.get("status") in ("completed", "failed"):
        raise CliError(f"run {run_id!r} is {snapshot['status']}; there is nothing to move")
    if name is not None:
        try:
            hosted = there.workflow(name)
        except ApiError as exc:
            if exc.status == 404:
                raise CliError(f"{target} does not host workflow {name!r}") from None
            raise
        if hosted.get("hash") != snapshot["definition"].get("hash"):
            raise CliError(
                f"{target} hosts workflow {name!r} with shape {hosted.get('hash')}, but the run "
                f"was started on {snapshot['definition'].get('hash')}: its nodes or edges differ"
            )
    try:
        there_now = there.get(run_id)
    except ApiError as exc:
        if exc.status != 404:
            raise
    else:
        meta = there_now.get("metadata") or {}
        if there_now.get("status") != "failed" or not meta.get("movedTo"):
            raise CliError(f"{target} holds a run {run_id!r} already; nothing was moved")
    exported = here.export(run_id, target, snapshot["version"])["snapshot"]
    try:
        answer = there.import_run(exported, source)
    except (ApiError, OSError) as exc:
        keep = Path(f"{run_id}.moved.json")
        keep.write_text(json.dumps(exported))
        raise CliError(
            f"the run ended at {source} but {target} refused it ({printable(str(exc))}); its "
            f"snapshot is in {keep}: import it with POST /runs/import once the cause is fixed"
        ) from None
    _print(answer)


@_command(
    "replay",
    help="Run a run again from its snapshot file, offline and in memory, with the app's "
    "executors, and print its timeline. Exit status 0 when it completes or waits, 1 when it "
    "fails.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--app", required=True, help="the module that names the workflows (executors)")
@click.option("--from", "from_node", metavar="NODE", help="start at this node (as a rerun)")
@click.option(
    "--payload",
    metavar="JSON",
    help="with --from: the node's input; else the event a waiting run gets",
)
@click.option(
    "--max-steps",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="stop after this many steps",
)
def replay(
    settings: Settings,
    file: str,
    app: str,
    from_node: str | None,
    payload: str | None,
    max_steps: int,
) -> None:
    from .replay import replay as run_replay

    try:
        raw = json.loads(Path(file).read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read a snapshot from {file}: {exc}", 2) from None
    if isinstance(raw, dict) and isinstance(raw.get("snapshot"), dict):
        raw = raw["snapshot"]  # what POST /runs/{id}/export answers
    try:
        snapshot = Snapshot.model_validate(raw)
    except ValueError as exc:
        raise CliError(f"{file} is not a run's snapshot: {str(exc).splitlines()[0]}", 2) from None
    workflows = _load(app)
    given = _json_arg(payload)
    try:
        final = asyncio.run(
            run_replay(workflows, snapshot, from_node=from_node, payload=given, max_steps=max_steps)
        )
    except (LookupError, RefluxoError) as exc:
        raise CliError(printable(str(exc))) from None
    if settings.as_json:
        from refluxo.core.timeline import timeline as timeline_json

        _print(timeline_json(final))
    else:
        _say(render_timeline(Snapshot.model_validate(_neutralised(final.to_dict()))))
    if final.status == "failed":
        raise SystemExit(1)


# --- reads --------------------------------------------------------------------------------


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@_command("runs", help="List runs, newest first.")
@click.option(
    "--status",
    type=click.Choice(["active", "paused", "error", "completed", "failed"]),
    help="only runs with this status",
)
@click.option("--workflow", help="only runs of this workflow")
@click.option(
    "--limit", type=click.IntRange(1, 200), default=20, show_default=True, help="runs per page"
)
@click.option("--cursor", help="start at this page (the cursor a previous page printed)")
@click.option("--all", "every", is_flag=True, help="follow the cursor to the last page")
def runs(
    settings: Settings,
    status: str | None,
    workflow: str | None,
    limit: int,
    cursor: str | None,
    every: bool,
) -> None:
    client = settings.client()
    found: list[Any] = []
    while True:
        page = client.list_runs(status=status, workflow=workflow, limit=limit, cursor=cursor)
        found.extend(page["runs"])
        cursor = page.get("cursor")
        if not every or not cursor:
            break
    if settings.as_json:
        _print({"runs": found, "cursor": cursor})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("id", "workflow", "status", "node", "updated", "failed reason"):
        table.add_column(column, overflow="fold")
    colours = {"failed": "red", "completed": "green", "error": "yellow", "paused": "cyan"}
    for run in _neutralised(found):
        table.add_row(
            run["id"],
            run.get("workflow") or "-",
            f"[{colours.get(run['status'], 'white')}]{run['status']}[/]",
            run.get("currentNode") or "-",
            _when(run.get("updatedAt")),
            run.get("failedReason") or "",
        )
    console = Console(highlight=False)
    console.print(table)
    if cursor:
        console.print(f"more: refluxo runs --cursor {cursor}", markup=False)


@_command("inspect", help="Show a run as a timeline (--json: its snapshot).")
@click.argument("run_id")
def inspect(settings: Settings, run_id: str) -> None:
    raw = settings.client().get(run_id)
    if settings.as_json:
        _print(raw)
        return
    now = int(datetime.now(UTC).timestamp() * 1000)
    _say(render_timeline(Snapshot.model_validate(_neutralised(raw)), now=now))


@_command("timeline", help="Print a run's timeline as JSON (GET /runs/{id}/timeline).")
@click.argument("run_id")
def timeline(settings: Settings, run_id: str) -> None:
    _print(settings.client().timeline(run_id))


@_command("graph", help="Print a workflow as a Mermaid diagram, from a module or a deployment.")
@click.argument("workflow")
@click.option(
    "--app",
    default=None,
    help="the module that names the workflows (default: $REFLUXO_APP or refluxo.demo; "
    "with --url, the deployment's definition is used instead)",
)
def graph(settings: Settings, workflow: str, app: str | None) -> None:
    ctx = click.get_current_context()
    from_url = app is None and (
        ctx.params.get("url_here") is not None
        or ctx.find_root().get_parameter_source("url") != click.core.ParameterSource.DEFAULT
    )
    if from_url:
        try:
            body = settings.client().workflow(workflow)
        except ApiError as exc:
            if exc.status == 404:
                raise CliError(f"no workflow {workflow!r} at {settings.url}", 2) from None
            raise
        definition = WorkflowDefinition.model_validate(_neutralised(body["definition"]))
    else:
        module = app or os.environ.get("REFLUXO_APP", "refluxo.demo")
        found = {w.name: w for w in _load(module)}
        if workflow not in found:
            raise CliError(f"no workflow {workflow!r} in {module}", 2)
        plain = found[workflow].engine.workflow.model_dump(mode="json")
        definition = WorkflowDefinition.model_validate(_neutralised(plain))
    if settings.as_json:
        _print(definition.to_dict())
    else:
        _say(to_mermaid(definition))


@_command("smoke", help="Run the demo to completion against a deployment (its URL).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds per stage")
@click.option("--poll", type=float, default=1.0, show_default=True, help="seconds between reads")
def smoke(settings: Settings, timeout: float, poll: float) -> None:
    from .smoke import smoke as run_smoke

    code = run_smoke(settings.client(timeout=30.0), timeout_s=timeout, poll_s=poll, out=sys.stdout)
    if code:
        raise SystemExit(code)


@_command(
    "ui",
    help="Serve the dashboard for the deployment at --url on this machine: a local proxy "
    "adds the token, which never reaches the browser.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option(
    "--port", type=int, default=8001, show_default=True, help="the port to listen on (0: any)"
)
def ui(settings: Settings, host: str, port: int) -> None:
    asyncio.run(_ui(settings, host, port))


async def _ui(settings: Settings, host: str, port: int) -> None:
    from .dashboard import DashboardServer

    server = DashboardServer(settings.url, settings.token, host=host, port=port)
    try:
        await server.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {printable(str(exc))}") from None
    _say(f"refluxo ui: dashboard for {settings.url} at {server.url}")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    print("refluxo ui: stopping", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status. Errors are one line on stderr."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="refluxo",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        _say("refluxo: aborted", file=sys.stderr)
        return 1
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            _say(exc.ctx.get_help())  # no command given: the help, as --help shows it
            return 2
        _say(f"refluxo: {printable(exc.format_message())}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        _say(f"refluxo: {printable(exc.format_message())}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
