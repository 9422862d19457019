"""The HTTP API as an ASGI application (standard library only): serve it with any ASGI server.

:class:`AsgiApp` wraps the framework-neutral :class:`~refluxo.core.http.HttpApi`. ``refluxo
dev`` and :class:`~refluxo.local.runtime.LocalRuntime` serve it with uvicorn
(:mod:`refluxo.local.server`); it also mounts in a Starlette or FastAPI service::

    from starlette.applications import Starlette
    from starlette.routing import Mount

    api = HttpApi(dispatcher, api_token=...)
    app = Starlette(routes=[Mount("/refluxo", app=AsgiApp(api))])

On top of what :class:`HttpApi` checks, the app refuses, before reading a body:

- a ``Host`` header outside ``allowed_hosts`` (when given): 400 ``host_not_allowed``; this
  stops DNS rebinding, where a web page's own domain is pointed at your machine;
- a POST to a route of the API whose ``Content-Type`` is not JSON (``application/json`` or
  ``application/*+json``): 415 ``unsupported_media_type``; a web page can send
  ``text/plain`` or a form to any address without asking first, but not JSON;
- a body without ``Content-Length`` (chunked): 411; a declared length over the limit: 413;
- headers larger than ``max_header_bytes`` (when given): 431.

The body is read only up to ``HttpApi.max_body_bytes``: a client that sends more than it
declared is answered 413 without the rest being read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from refluxo.core.http import HttpApi, HttpRequest, HttpResponse, LimitedBody

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
"""The names a loopback address answers to; what :func:`hosts_for` allows for ``127.0.0.1``."""

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def hosts_for(listen_host: str) -> frozenset[str] | None:
    """The Host names a server listening on ``listen_host`` should answer (None: any).

    A loopback address answers to itself and the loopback names; another address to itself
    only. An address that listens on every interface (``0.0.0.0``) cannot tell which names are
    its own: None, give ``allowed_hosts`` yourself.
    """
    host = listen_host.strip().lower()
    if host in _WILDCARDS:
        return None
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return LOOPBACK_HOSTS | {host}
    return frozenset({host, f"[{host}]"} if ":" in host else {host})


def _host_name(value: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``[::1]``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class AsgiApp:
    """The refluxo HTTP API as an ASGI 3 application.

    Args:
        api: the API to serve (its ``max_body_bytes`` bounds what is read).
        allowed_hosts: the ``Host`` names (without port) the app answers; None answers any.
        require_json: refuse POSTs whose ``Content-Type`` is not JSON (415).
        max_header_bytes: refuse requests whose header names and values add up to more
            (431); None leaves the limit to the server.
    """

    def __init__(
        self,
        api: HttpApi,
        *,
        allowed_hosts: Iterable[str] | None = None,
        require_json: bool = True,
        max_header_bytes: int | None = None,
    ) -> None:
        self.api = api
        self.max_header_bytes = max_header_bytes
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        )
        self.require_json = require_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"refluxo serves HTTP only, not {scope['type']!r}")
        response = await self._answer(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    *(
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in response.headers.items()
                    ),
                    (b"content-length", str(len(response.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _answer(self, scope: Scope, receive: Receive) -> HttpResponse:
        headers: dict[str, str] = {}
        raw_headers = scope.get("headers", ())
        if self.max_header_bytes is not None:
            size = sum(len(name) + len(value) + 4 for name, value in raw_headers)
            if size > self.max_header_bytes:
                return HttpResponse.error(
                    431,
                    "headers_too_large",
                    f"the headers are {size} bytes, over the limit of {self.max_header_bytes}",
                )
        for raw_name, raw_value in raw_headers:
            name = bytes(raw_name).decode("latin-1").lower()
            value = bytes(raw_value).decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        method = str(scope["method"]).upper()
        if self.allowed_hosts is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed_hosts:
                return HttpResponse.error(
                    400, "host_not_allowed", f"this server does not answer to Host {host!r}"
                )
        path = str(scope.get("path", "/"))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        limit = self.api.max_body_bytes
        if self.api.reads_json(method, path):
            if self.require_json and not _is_json(headers.get("content-type")):
                return HttpResponse.error(
                    415, "unsupported_media_type", "send the body as Content-Type: application/json"
                )
            if "content-length" not in headers and "chunked" in headers.get(
                "transfer-encoding", ""
            ):
                return HttpResponse.error(411, "length_required", "send a Content-Length")
        declared = headers.get("content-length")
        body = LimitedBody(limit, declared)
        refused = body.refusal()
        if refused is not None:
            return refused
        # A request without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3).
        more = declared is not None or "transfer-encoding" in headers
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            if not body.add(message.get("body", b"")):
                return body.refusal() or HttpResponse.too_large(body.size, limit)
            more = bool(message.get("more_body", False))
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        request = HttpRequest(
            method=method,
            path=f"{path}?{query}" if query else path,
            body=body.bytes(),
            headers=headers,
        )
        return await self.api.handle(request)
