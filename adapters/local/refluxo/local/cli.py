"""``refluxo``: run the embedded runtime and talk to any refluxo deployment.

    refluxo dev [--app refluxo.demo] [--db .refluxo/dev.db] [--port 8000] [--lease 60]
                [--allowed-host H]
    refluxo start WORKFLOW [--id ID] [--input JSON]
    refluxo event RUN_ID [--payload JSON] [--name NAME] [--id EVENT_ID]
    refluxo cancel RUN_ID [--reason TEXT]
    refluxo inspect RUN_ID [--json]
    refluxo graph WORKFLOW [--app refluxo.demo]
    refluxo smoke --url URL [--token T] [--timeout 300]
    refluxo ui --url URL [--token T] [--port 8001]

The client commands call the HTTP API at ``--url`` (default ``$REFLUXO_URL`` or
http://127.0.0.1:8000) with ``--token`` (default ``$REFLUXO_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, TextIO

from refluxo.core import Snapshot
from refluxo.core.logs import configure_logging
from refluxo.core.timeline import render_timeline, to_mermaid

from .client import ApiError, Client
from .scheduler import DEFAULT_LEASE_MS


def _json_arg(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"refluxo: not valid JSON: {text!r} ({exc})") from None


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


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


async def _dev(args: argparse.Namespace) -> None:
    from refluxo.core.dispatcher import load_workflows

    from .runtime import LocalRuntime

    configure_logging(args.log)
    globals_ = _json_arg(os.environ.get("REFLUXO_GLOBALS"))
    async with LocalRuntime(
        load_workflows(args.app),
        db_path=args.db,
        api_token=args.token,
        globals=globals_,
        lease_ms=round(args.lease * 1000),
    ) as runtime:
        server = await runtime.serve(
            args.host, args.port, allowed_hosts=args.allowed_host, dashboard=True
        )
        names = ", ".join(runtime.dispatcher.workflows)
        _say(f"refluxo dev: serving {names} on {server.url} (state in {args.db})")
        _say(f"refluxo dev: dashboard at {server.url}/ui/")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("refluxo dev: stopping", flush=True)


async def _ui(args: argparse.Namespace) -> None:
    from .dashboard import DashboardServer

    server = DashboardServer(args.url, args.token, host=args.host, port=args.port)
    await server.start()
    _say(f"refluxo ui: dashboard for {args.url} at {server.url}")
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="refluxo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("REFLUXO_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("REFLUXO_TOKEN"))
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="serve the HTTP API with SQLite and the local scheduler")
    dev.add_argument("--app", default=os.environ.get("REFLUXO_APP", "refluxo.demo"))
    dev.add_argument("--db", default=".refluxo/dev.db")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument(
        "--allowed-host",
        action="append",
        help="a Host name to answer (repeatable; default: the --host address, and the "
        "loopback names when it is a loopback address)",
    )
    dev.add_argument("--log", choices=["text", "json"], default="text")
    dev.add_argument(
        "--lease",
        type=_seconds,
        default=DEFAULT_LEASE_MS / 1000,
        metavar="SECONDS",
        help="how long a step's message stays leased to a process that stopped renewing it "
        "(one that died) before another takes it over; a restart on the same host takes "
        "back its dead predecessor's leases at once (default: %(default)g)",
    )

    start = sub.add_parser("start", help="start a run")
    start.add_argument("workflow")
    start.add_argument("--id")
    start.add_argument("--input")

    event = sub.add_parser("event", help="send an event to a run")
    event.add_argument("run_id")
    event.add_argument("--payload", default="null")
    event.add_argument("--name")
    event.add_argument("--id", dest="event_id")

    cancel = sub.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run_id")
    cancel.add_argument("--reason")

    inspect = sub.add_parser("inspect", help="show a run as a timeline")
    inspect.add_argument("run_id")
    inspect.add_argument("--json", action="store_true", help="print the raw snapshot")

    graph = sub.add_parser("graph", help="print a workflow as a Mermaid diagram")
    graph.add_argument("workflow")
    graph.add_argument("--app", default=os.environ.get("REFLUXO_APP", "refluxo.demo"))

    smoke = sub.add_parser(
        "smoke", help="run the demo to completion against a deployment (its URL)"
    )
    # SUPPRESS: given after the command they override the global options; else those hold.
    smoke.add_argument("--url", default=argparse.SUPPRESS)
    smoke.add_argument("--token", default=argparse.SUPPRESS)
    smoke.add_argument("--timeout", type=float, default=300.0, help="seconds per stage")
    smoke.add_argument("--poll", type=float, default=1.0, help="seconds between reads")

    ui = sub.add_parser(
        "ui",
        help="serve the dashboard for a deployment (its URL) on this machine; the token "
        "stays in this process",
    )
    ui.add_argument("--url", default=argparse.SUPPRESS, help="the deployment's HTTP API")
    ui.add_argument("--token", default=argparse.SUPPRESS, help="the API's bearer token")
    ui.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    ui.add_argument("--port", type=int, default=8001, help="the port (0: any free one)")

    args = parser.parse_args(argv)
    try:
        if args.command == "dev":
            asyncio.run(_dev(args))
        elif args.command == "start":
            _print(_client(args).start(args.workflow, args.id, _json_arg(args.input)))
        elif args.command == "event":
            _print(
                _client(args).event(args.run_id, _json_arg(args.payload), args.name, args.event_id)
            )
        elif args.command == "cancel":
            _print(_client(args).cancel(args.run_id, args.reason))
        elif args.command == "inspect":
            raw = _client(args).get(args.run_id)
            if args.json:
                _print(raw)
            else:
                _say(render_timeline(Snapshot.model_validate(_neutralised(raw))))
        elif args.command == "ui":
            asyncio.run(_ui(args))
        elif args.command == "smoke":
            from .smoke import smoke as run_smoke

            return run_smoke(
                Client(args.url, args.token, timeout=30.0),
                timeout_s=args.timeout,
                poll_s=args.poll,
                out=sys.stdout,
            )
        elif args.command == "graph":
            from refluxo.core.dispatcher import load_workflows

            found = {w.name: w for w in load_workflows(args.app)}
            if args.workflow not in found:
                _say(f"refluxo: no workflow {args.workflow!r} in {args.app}", file=sys.stderr)
                return 2
            definition = found[args.workflow].engine.workflow.model_dump(mode="json")
            neutral = type(found[args.workflow].engine.workflow).model_validate(
                _neutralised(definition)
            )
            _say(to_mermaid(neutral))
    except ApiError as exc:
        _say(f"refluxo: {printable(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        _say(f"refluxo: cannot reach {args.url}: {printable(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
