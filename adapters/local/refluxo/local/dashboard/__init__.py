"""The dashboard: static pages that operate any refluxo deployment through its HTTP API.

``refluxo ui --url URL [--token T]`` serves it on localhost, and ``refluxo dev`` at ``/ui``.
The pages are plain files shipped in the package (no build step, nothing fetched from the
network) and talk only to their own origin: ``api/...`` is a small proxy that forwards the
API's public routes to the deployment and adds the bearer token itself, so the token never
reaches the browser and the deployment needs no CORS.

The proxy is reachable by any web page the operator visits, so it answers only:

- requests whose ``Host`` is one of ``allowed_hosts`` (no DNS rebinding);
- requests that carry the header ``X-Refluxo-UI: 1``: a page of another origin cannot add a
  header to a request without asking first (CORS preflight), and the dashboard never says yes;
- the public routes (``runs``, ``workflows``, ``openapi.json``), never the scheduler's.

Every page is sent with a Content-Security-Policy that runs only the dashboard's own scripts,
and the scripts put what a run holds into the page as text, never as markup.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from refluxo.core.http import HttpApi, HttpRequest

from ..asgi import Receive, Scope, Send, _host_name

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

_PROXIED = re.compile(r"/(runs|workflows)(/[^?#]*)?|/openapi\.json")
"""The API routes the proxy forwards (matched whole, on the path without its query)."""

MAX_BODY_BYTES = 256 * 1024

UI_HEADER = "x-refluxo-ui"


@dataclass(frozen=True)
class Answer:
    """What the deployment answered: status, body and its content type."""

    status: int
    body: bytes
    content_type: str = "application/json"


Upstream = Callable[[str, str, bytes], Awaitable[Answer]]
"""Forwards ``(method, path with query, body)`` to a deployment's API."""


def _error(status: int, code: str, message: str) -> Answer:
    return Answer(status, json.dumps({"error": {"code": code, "message": message}}).encode())


def http_upstream(url: str, token: str | None = None, *, timeout: float = 30.0) -> Upstream:
    """An upstream that calls the deployment at ``url`` over HTTP, with ``token`` as bearer."""
    base = url.rstrip("/")

    def call(method: str, target: str, body: bytes) -> Answer:
        request = urllib.request.Request(
            base + target, data=body if method == "POST" else None, method=method
        )
        request.add_header("content-type", "application/json")
        request.add_header("accept", "application/json")
        if token:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                kind = response.headers.get("content-type", "application/json")
                return Answer(response.status, response.read(), kind)
        except urllib.error.HTTPError as exc:
            kind = exc.headers.get("content-type", "application/json")
            return Answer(exc.code, exc.read(), kind)
        except (OSError, ValueError) as exc:
            return _error(502, "unreachable", f"cannot reach {base}: {exc}")

    async def forward(method: str, target: str, body: bytes) -> Answer:
        return await asyncio.to_thread(call, method, target, body)

    return forward


def api_upstream(api: HttpApi, token: str | None = None) -> Upstream:
    """An upstream that answers from ``api`` in this process (``refluxo dev``'s ``/ui``)."""

    async def forward(method: str, target: str, body: bytes) -> Answer:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        response = await api.handle(HttpRequest(method, target, body, headers))
        kind = dict(response.headers).get("content-type", "application/json")
        return Answer(response.status, response.body, kind)

    return forward


def static_file(name: str) -> bytes | None:
    """The bytes of the dashboard's file ``name`` (a bare file name), or None."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*\.(html|js|css)", name):
        return None
    item = resources.files(__package__).joinpath("static", name)
    return item.read_bytes() if item.is_file() else None


class DashboardApp:
    """The dashboard as an ASGI application (pages at ``/``, the proxy at ``/api/...``).

    Args:
        upstream: where ``/api/...`` is forwarded (:func:`http_upstream`, :func:`api_upstream`).
        target: the deployment's address, shown in the page's header.
        allowed_hosts: the ``Host`` names answered; None answers any.
    """

    def __init__(
        self, upstream: Upstream, *, target: str, allowed_hosts: Iterable[str] | None = None
    ) -> None:
        self.upstream = upstream
        self.target = target
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"the dashboard serves HTTP only, not {scope['type']!r}")
        status, body, headers = await self._answer(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in scope.get("headers", ())
        }
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                return self._json(
                    _error(400, "host_not_allowed", f"this server does not answer {host!r}")
                )
        method = str(scope["method"]).upper()
        path = str(scope.get("path", "/"))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if path.startswith("/api/"):
            query = bytes(scope.get("query_string", b"")).decode("latin-1")
            return self._json(await self._proxy(method, path[4:], query, headers, receive))
        if method not in ("GET", "HEAD"):
            return self._json(_error(405, "method_not_allowed", f"{path} takes GET"))
        if path == "/info.json":
            return self._json(Answer(200, json.dumps({"target": self.target}).encode()))
        name = "index.html" if path in ("", "/") else path.rsplit("/", 1)[-1]
        content = static_file(name) if path in ("", "/", f"/{name}") else None
        if content is None:
            return self._json(_error(404, "not_found", f"no page {path}"))
        kind = _STATIC_TYPES[name[name.rindex(".") :]]
        return 200, content, {**_SECURITY_HEADERS, "content-type": kind}

    @staticmethod
    def _json(answer: Answer) -> tuple[int, bytes, dict[str, str]]:
        kind = answer.content_type if "json" in answer.content_type else "application/json"
        return answer.status, answer.body, {**_SECURITY_HEADERS, "content-type": kind}

    async def _proxy(
        self, method: str, path: str, query: str, headers: dict[str, str], receive: Receive
    ) -> Answer:
        if headers.get(UI_HEADER) != "1":
            return _error(403, "forbidden", "the dashboard's API answers the dashboard only")
        if not _PROXIED.fullmatch(path) or "/." in path or "//" in path:
            return _error(404, "not_found", f"the dashboard does not forward {path}")
        if method not in ("GET", "POST"):
            return _error(405, "method_not_allowed", f"{path} takes GET or POST")
        body = bytearray()
        more = method == "POST"
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                return _error(413, "payload_too_large", f"over {MAX_BODY_BYTES} bytes")
            more = bool(message.get("more_body", False))
        return await self.upstream(method, f"{path}?{query}" if query else path, bytes(body))


def mount(api_app: Any, dashboard: DashboardApp, prefix: str = "/ui") -> Any:
    """One ASGI app: ``dashboard`` under ``prefix``, everything else to ``api_app``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and path == prefix:
            await send(
                {
                    "type": "http.response.start",
                    "status": 308,
                    "headers": [(b"location", f"{prefix}/".encode()), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        elif scope["type"] == "http" and path.startswith(prefix + "/"):
            await dashboard({**scope, "path": path[len(prefix) :]}, receive, send)
        else:
            await api_app(scope, receive, send)

    return app


class DashboardServer:
    """``refluxo ui``: the dashboard for the deployment at ``url``, served with uvicorn.

    Args:
        url: the deployment's base URL (its HTTP API).
        token: the API's bearer token, added by the proxy (never sent to the browser).
        host: the address to listen on (loopback by default: the proxy holds the token).
        port: the port (0: any free one; see :attr:`port` once started).
    """

    def __init__(
        self, url: str, token: str | None = None, host: str = "127.0.0.1", port: int = 8001
    ) -> None:
        from ..asgi import hosts_for

        self.host = host
        self.port = port
        self.app = DashboardApp(
            http_upstream(url, token), target=url, allowed_hosts=hosts_for(host)
        )
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Where the dashboard is served."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind and start answering.

        Raises:
            OSError: the address cannot be bound.
        """
        from ..server import _uvicorn

        uvicorn = _uvicorn()
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        config.load()
        # Bound here, not by uvicorn: a port in use is then an OSError that says why, where
        # uvicorn would log it and exit.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except SystemExit:
            sock.close()
            raise OSError(f"cannot listen on {self.host}:{self.port}") from None
        self._server = server
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(server.main_loop())

    async def stop(self) -> None:
        """Stop answering and close."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None
        await server.shutdown()


def beside_the_api(api: HttpApi, token: str | None = None) -> Callable[[Any], Any]:
    """A ``LocalServer(wrap=...)`` that serves the dashboard at ``/ui/`` beside ``api``.

    The dashboard calls ``api`` in-process, with ``token`` when the API requires one.
    """

    def wrap(app: Any) -> Any:
        ui = DashboardApp(
            api_upstream(api, token), target="this server", allowed_hosts=app.allowed_hosts
        )
        return mount(app, ui)

    return wrap
