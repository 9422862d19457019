"""One HTTP API, written once, mounted by every runtime (local server, Cloud Function, Worker).

Routes::

    GET  /workflows                                              200 {"workflows": [...]}
    GET  /workflows/{name}                                       200 its definition
    POST /workflows/{name}/runs   {"id"?: str, "input"?: any}    201 new run, 200 existing
    GET  /runs?workflow=&status=&updated_before=&updated_after=&limit=&cursor=
                                                                 200 {"runs": [...], "cursor"}
    GET  /runs/{id}                                              200 the snapshot as JSON
    POST /runs/{id}/events        {"payload": any, "name"?, "id"?} 202 (id: safe retries)
    POST /runs/{id}/cancel        {"reason"?: str}               200
    POST /runs/{id}/retry         {"reason"?: str, "force"?: bool} 200 the failed run continues
    POST /runs/{id}/rerun         {"from": node, "input"?, "id"?} 201 a new run from that node
    GET  /runs/{id}/timeline                                     200 steps, waits, events, links
    POST /runs/{id}/export        {"to": str, "version": int}    200 {"snapshot"}: ended here
    POST /runs/import             {"snapshot": {...}, "from"?}   201 the run continues here
    POST /_dispatch               a DispatchMessage              200 with the outcome
    POST /_reconcile              {"graceMs"?: int, "limit"?: int} 200 {"scheduled": [ids]}
    POST /_cron                   {"workflow", "schedule", "tick"?} 200 {"runId", "created"}
    GET  /healthz                                                200
    GET  /openapi.json                                           200 the OpenAPI 3.1 document

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``: 400 malformed JSON or fields,
or JSON that breaks the strict rule (code ``json_limit``: NaN or Infinity, a lone surrogate,
nesting deeper than the deployment's ``max_depth``; the message names the limit), 401/403
credentials, 404 unknown route, workflow or run, 405 method, 409 finished run or id taken, 413
body or event over a limit, 429 the run's inbox is full (``inbox_full``), 501 a store that
cannot find due runs (``/_reconcile``), 503 transient backend failure (the platform delivers
again). Bad input changes nothing, and no input makes a 500: invalid UTF-8 and non-ASCII
credentials are 4xx too. Bodies are validated by the models of :mod:`refluxo.core.schema`,
which also give the OpenAPI document. A runtime converts its request into
:class:`HttpRequest`, awaits
:meth:`HttpApi.handle`, and converts the :class:`HttpResponse` back.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .codec import DEFAULT_MAX_DEPTH, MAX_DEPTH_CEILING
from .delivery import Redelivery
from .dispatcher import RunService, check_run_id
from .errors import (
    BackendError,
    InboxFull,
    NodeNotFound,
    NotRetryable,
    NotStrictJson,
    PayloadTooLarge,
    RunFinished,
    RunNotFound,
    VersionConflict,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .model import DispatchMessage
from .ports import DueRuns, RunIndex

logger = logging.getLogger("refluxo.http")

DEFAULT_MAX_BODY_BYTES = 256 * 1024

_Model = TypeVar("_Model", bound=BaseModel)

MAX_JSON_DEPTH = DEFAULT_MAX_DEPTH
"""How deep a run's input or an event's payload may nest by default (see :class:`Limits`)."""

_PUSH_QUEUE = Redelivery()
"""A push queue over HTTP (Cloud Tasks) counts attempts and waits between them itself: only
the decision's status matters here."""

_DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (RunNotFound, 404, "unknown_run"),
    (WorkflowNotFound, 404, "unknown_workflow"),
    (NodeNotFound, 400, "unknown_node"),
    (RunFinished, 409, "run_finished"),
    (NotRetryable, 409, "not_retryable"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (InboxFull, 429, "inbox_full"),
    (VersionConflict, 503, "busy"),
)
"""How a route answers the service's errors, unless the route says otherwise."""

_DOMAIN_ERROR_TYPES = tuple(kind for kind, _, _ in _DOMAIN_ERRORS)


def _domain_error(exc: Exception) -> HttpError:
    """The answer to one of :data:`_DOMAIN_ERRORS` that a route let through."""
    for kind, status, code in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            message = str(exc)
            if kind is VersionConflict:
                message = f"the run kept changing; try again ({exc})"
            return HttpError(status, code, message)
    raise TypeError(f"not a domain error: {type(exc).__name__}")


_MAX_BODY_DEPTH = MAX_DEPTH_CEILING + 1
"""No body is read deeper than the deepest value any deployment accepts, plus the body itself."""


@dataclass(frozen=True)
class HttpRequest:
    """A request as every runtime can build it. Header names are matched case-insensitively."""

    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The value of header ``name``, or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class HttpResponse:
    """A response: status, JSON body bytes, headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    @classmethod
    def json(cls, status: int, payload: Any) -> HttpResponse:
        return cls(status, json.dumps(payload, separators=(",", ":"), allow_nan=False).encode())

    @classmethod
    def error(cls, status: int, code: str, message: str) -> HttpResponse:
        """An error answer in the API's shape: ``{"error": {"code", "message"}}``."""
        return cls.json(status, {"error": {"code": code, "message": message}})

    @classmethod
    def too_large(cls, size: int, limit: int) -> HttpResponse:
        """The 413 answer for a body of ``size`` bytes over ``limit`` (sent before reading it)."""
        return cls.error(
            413, "payload_too_large", f"the body is {size} bytes, over the limit of {limit}"
        )

    def json_body(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class LimitedBody:
    """A request body read no further than ``limit`` bytes: every front door reads through one.

    Ask :meth:`refusal` first: a declared length over the limit is refused before anything is
    read. Then :meth:`add` chunks while it returns True and :attr:`wanted` is positive; once
    it returns False the body passed the limit: stop reading and answer :meth:`refusal`.

    Args:
        limit: the most bytes accepted (``HttpApi.max_body_bytes``).
        declared: the request's Content-Length, if any (a value that is not a number is
            ignored, and the body read as if it had none).
    """

    __slots__ = ("_chunks", "declared", "limit", "size")

    def __init__(self, limit: int, declared: str | int | None) -> None:
        self.limit = limit
        text = str(declared).strip() if declared is not None else ""
        self.declared: int | None = int(text) if text.isdigit() else None
        self.size = 0
        self._chunks: list[bytes] = []

    @property
    def wanted(self) -> int:
        """How many more bytes to read at most: one past the limit tells that it was passed."""
        return self.limit + 1 - self.size

    def refusal(self) -> HttpResponse | None:
        """The 413 answer when the declared length or what was read is over the limit."""
        if self.declared is not None and self.declared > self.limit:
            return HttpResponse.too_large(self.declared, self.limit)
        if self.size > self.limit:
            return HttpResponse.error(
                413, "payload_too_large", f"the body is over the limit of {self.limit} bytes"
            )
        return None

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; False once the body is over the limit (stop reading)."""
        self.size += len(chunk)
        if self.size > self.limit:
            return False
        self._chunks.append(bytes(chunk))
        return True

    def bytes(self) -> bytes:
        """The body read so far."""
        return b"".join(self._chunks)


class HttpError(Exception):
    """An error answer: status, a stable code, and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


Authenticator = Callable[[HttpRequest], Awaitable[bool]]
"""Decides whether a request carries the right credential."""


def bearer_token(token: str) -> Authenticator:
    """An authenticator that accepts ``Authorization: Bearer <token>`` (constant-time)."""

    expected = token.encode("utf-8", "surrogatepass")

    async def check(request: HttpRequest) -> bool:
        value = request.header("authorization") or ""
        scheme, _, given = value.partition(" ")
        # Bytes, not str: compare_digest refuses non-ASCII text, and a header may hold any.
        candidate = given.strip().encode("utf-8", "surrogatepass")
        return scheme.lower() == "bearer" and hmac.compare_digest(candidate, expected)

    return check


def _check_json_value(value: Any) -> None:
    """Refuse what parses but can never be stored, before any model looks at it.

    Lone surrogates anywhere, and nesting past what any deployment accepts. The deployment's
    own, lower, depth limit is applied to the input or payload by the dispatcher.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise HttpError(
                    400, "json_limit", "the body holds a lone surrogate (not valid Unicode)"
                ) from None
            continue
        if isinstance(item, dict):
            children: list[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > _MAX_BODY_DEPTH:
            raise HttpError(
                400,
                "json_limit",
                f"the body is nested deeper than {_MAX_BODY_DEPTH} levels (max_depth)",
            )
        stack.extend((child, depth + 1) for child in children)


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/workflows"), "workflows"),
    ("GET", re.compile(r"/workflows/(?P<name>[^/]+)"), "workflow"),
    ("POST", re.compile(r"/workflows/(?P<name>[^/]+)/runs"), "start"),
    ("GET", re.compile(r"/runs"), "list"),
    ("GET", re.compile(r"/runs/(?P<run_id>[^/]+)"), "get"),
    ("POST", re.compile(r"/runs/(?P<run_id>[^/]+)/events"), "event"),
    ("POST", re.compile(r"/runs/(?P<run_id>[^/]+)/cancel"), "cancel"),
    ("POST", re.compile(r"/runs/(?P<run_id>[^/]+)/retry"), "retry"),
    ("POST", re.compile(r"/runs/(?P<run_id>[^/]+)/rerun"), "rerun"),
    ("GET", re.compile(r"/runs/(?P<run_id>[^/]+)/timeline"), "timeline"),
    ("POST", re.compile(r"/runs/(?P<run_id>[^/]+)/export"), "export"),
    ("POST", re.compile(r"/runs/import"), "import_run"),
    ("POST", re.compile(r"/_dispatch"), "dispatch"),
    ("POST", re.compile(r"/_reconcile"), "reconcile"),
    ("POST", re.compile(r"/_cron"), "cron"),
    ("GET", re.compile(r"/healthz"), "health"),
    ("GET", re.compile(r"/openapi\.json"), "openapi"),
]
"""Matched whole (``fullmatch``): a trailing newline is not part of any route."""

_IMPORT_ROUTES = [route for route in _ROUTES if route[2] == "import_run"]
_RESERVED_IDS = frozenset({"import"})
"""Run ids the API refuses to give a new run: they would be read as another route."""


def _schema() -> Any:
    """:mod:`refluxo.core.schema`, imported on the first request rather than at cold start."""
    from . import schema

    return schema


def _normal_path(target: str) -> str:
    """The path of a request target: no query, no trailing slash."""
    path = target.split("?", 1)[0]
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


MAX_LIST_LIMIT = 200
"""The most runs one page of ``GET /runs`` holds."""

_STATUSES = ("active", "paused", "error", "completed", "failed")


def _query(target: str) -> dict[str, str]:
    """The query parameters of a request target; a parameter given twice is refused."""
    raw = target.partition("?")[2]
    try:
        pairs = urllib.parse.parse_qsl(
            raw, keep_blank_values=True, strict_parsing=bool(raw), errors="strict"
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, "invalid_query", f"the query string is malformed: {exc}") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise HttpError(400, "invalid_query", f"{key} is given more than once")
        query[key] = value
    return query


def _time_param(name: str, text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 date-time (UTC when it names no zone)."""
    if text.isdigit() and len(text) <= 16:
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise HttpError(
            400, "invalid_query", f"{name} must be epoch milliseconds or an ISO 8601 date-time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def encode_cursor(updated_at: int, run_id: str) -> str:
    """The opaque cursor of ``GET /runs``: where the next page starts."""
    raw = json.dumps([updated_at, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The position a cursor of :func:`encode_cursor` names; HttpError 400 for any other."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated_at, run_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise HttpError(400, "invalid_cursor", "the cursor is not one this API gave") from None
    if type(updated_at) is not int or not isinstance(run_id, str):
        raise HttpError(400, "invalid_cursor", "the cursor is not one this API gave")
    return updated_at, run_id


def _refuse_constant(token: str) -> Any:
    raise NotStrictJson(f"the body holds {token}, which is not a JSON number", "nan")


def _summary(snapshot: Any) -> dict[str, Any]:
    return {
        "workflowId": snapshot.run_id,
        "status": snapshot.status,
        "version": snapshot.version,
    }


def _workflow_info(workflow: Any) -> dict[str, Any]:
    return {"name": workflow.name, "hash": workflow.ref.hash, "start": workflow.start}


class HttpApi:
    """The refluxo HTTP API over a :class:`RunService`.

    Args:
        dispatcher: what the routes operate on.
        api_token: when set, the public routes require ``Authorization: Bearer <api_token>``.
        dispatch_auth: how ``/_dispatch`` authenticates the scheduler (a bearer token, or an
            OIDC check on Google Cloud). Without one, ``/_dispatch`` refuses every request.
        max_body_bytes: larger bodies are refused with 413 before they are parsed.
    """

    def __init__(
        self,
        dispatcher: RunService,
        *,
        api_token: str | None = None,
        dispatch_auth: Authenticator | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.dispatcher = dispatcher
        self._api_auth = bearer_token(api_token) if api_token else None
        self._dispatch_auth = dispatch_auth
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def reads_json(method: str, path: str) -> bool:
        """True when ``method path`` is a route that reads a JSON body (every POST route).

        A front end that refuses bodies not declared as JSON (the local server) asks this,
        so that an unknown route or method still gets its 404 or 405.
        """
        if method.upper() != "POST":
            return False
        path = _normal_path(path)
        return any(m == "POST" and pattern.fullmatch(path) for m, pattern, _ in _ROUTES)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request; never raises."""
        try:
            return await self._route(request)
        except HttpError as exc:
            return HttpResponse.json(
                exc.status, {"error": {"code": exc.code, "message": exc.message}}
            )
        except NotStrictJson as exc:
            return HttpResponse.error(400, "json_limit", str(exc))
        except _DOMAIN_ERROR_TYPES as exc:
            known = _domain_error(exc)
            return HttpResponse.error(known.status, known.code, known.message)
        except BackendError as exc:
            # A push queue (Cloud Tasks) delivers a message again on either status.
            decision = _PUSH_QUEUE.decide(exc)
            level = logging.WARNING if decision.transient else logging.ERROR
            logger.log(level, "backend failure on %s %s: %s", request.method, request.path, exc)
            code = "unavailable" if decision.transient else "backend_error"
            return HttpResponse.error(decision.http_status, code, str(exc))
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.path)
            return HttpResponse.error(500, "internal", "internal error")

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path = _normal_path(request.path)
        allowed: list[str] = []
        # /runs/import is the import route alone, not also the run named "import" (a name no
        # run can take: see _RESERVED_IDS).
        routes = _IMPORT_ROUTES if path == "/runs/import" else _ROUTES
        for method, pattern, action in routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method != request.method.upper():
                allowed.append(method)
                continue
            if len(request.body) > self.max_body_bytes:
                return HttpResponse.too_large(len(request.body), self.max_body_bytes)
            if action == "health":
                return HttpResponse.json(200, {"ok": True})
            if action == "openapi":
                from .schema import openapi_document

                return HttpResponse.json(200, openapi_document())
            if action == "dispatch":
                return await self._dispatch(request)
            if action == "reconcile":
                return await self._reconcile(request)
            if action == "cron":
                return await self._cron(request)
            if self._api_auth is not None and not await self._api_auth(request):
                raise HttpError(401, "unauthorized", "a valid bearer token is required")
            if action == "list":
                return await self._list(request)
            handler = getattr(self, f"_{action}")
            response: HttpResponse = await handler(request, **match.groupdict())
            return response
        if allowed:
            refused = HttpResponse.error(
                405, "method_not_allowed", f"{path} takes {', '.join(allowed)}"
            )
            return HttpResponse(405, refused.body, {**refused.headers, "allow": ", ".join(allowed)})
        raise HttpError(404, "not_found", f"no route for {request.method} {path}")

    # --- body parsing --------------------------------------------------------------------

    @staticmethod
    def _json(request: HttpRequest, *, required: bool = True) -> Any:
        if not request.body.strip():
            if required:
                raise HttpError(400, "invalid_json", "the body must be a JSON object")
            return {}
        try:
            data = json.loads(request.body, parse_constant=_refuse_constant)
        except NotStrictJson:
            raise
        except RecursionError:
            raise HttpError(
                400, "json_limit", "the body nests deeper than the JSON parser reads"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "invalid_json", "the body must be a JSON object")
        _check_json_value(data)
        return data

    @staticmethod
    def _body(model: type[_Model], data: Any) -> _Model:
        from .schema import body_problems

        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise HttpError(400, "invalid_request", body_problems(exc)) from None

    @staticmethod
    def _run_id(run_id: str) -> str:
        try:
            return check_run_id(run_id)
        except ValueError as exc:
            raise HttpError(400, "invalid_run_id", str(exc)) from None

    @classmethod
    def _new_run_id(cls, run_id: str) -> str:
        if run_id in _RESERVED_IDS:
            raise HttpError(
                400, "invalid_run_id", f"{run_id!r} is reserved (POST /runs/{run_id} is a route)"
            )
        return cls._run_id(run_id)

    # --- routes --------------------------------------------------------------------------

    async def _start(self, request: HttpRequest, name: str) -> HttpResponse:
        body = self._body(_schema().StartRun, self._json(request, required=False))
        run_id = self._new_run_id(body.id) if body.id is not None else None
        try:
            snapshot, created = await self.dispatcher.start(name, run_id=run_id, input=body.input)
        except WorkflowMismatch as exc:
            raise HttpError(409, "run_id_taken", str(exc)) from None
        return HttpResponse.json(201 if created else 200, _summary(snapshot))

    async def _workflows(self, request: HttpRequest) -> HttpResponse:
        hosted = [_workflow_info(w) for w in self.dispatcher.workflows.values()]
        return HttpResponse.json(200, {"workflows": hosted})

    async def _workflow(self, request: HttpRequest, name: str) -> HttpResponse:
        workflow = self.dispatcher.workflow(name)
        return HttpResponse.json(
            200, {**_workflow_info(workflow), "definition": workflow.engine.workflow.to_dict()}
        )

    async def _list(self, request: HttpRequest) -> HttpResponse:
        """``GET /runs``: summaries, newest first, one page at a time (see :class:`RunIndex`)."""
        query = _query(request.path)
        known = {"workflow", "status", "updated_before", "updated_after", "limit", "cursor"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise HttpError(400, "invalid_query", f"unknown parameter(s): {', '.join(unknown)}")
        status = query.get("status")
        if status is not None and status not in _STATUSES:
            raise HttpError(400, "invalid_query", f"status must be one of {', '.join(_STATUSES)}")
        limit = 50
        if "limit" in query:
            text = query["limit"]
            if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
                raise HttpError(
                    400, "invalid_query", f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}"
                )
            limit = int(text)
        options: dict[str, Any] = {
            "workflow": query.get("workflow") or None,
            "status": status,
            "after": decode_cursor(query["cursor"]) if query.get("cursor") else None,
        }
        for name in ("updated_before", "updated_after"):
            if query.get(name):
                options[name] = _time_param(name, query[name])
        store = self.dispatcher.store
        if not isinstance(store, RunIndex):
            raise HttpError(501, "not_implemented", f"{type(store).__name__} cannot list runs")
        # One more than asked for tells whether another page follows.
        found = await store.find_runs(**options, limit=limit + 1)
        page = found[:limit]
        cursor = None
        if len(found) > limit:
            cursor = encode_cursor(page[-1].updated_at, page[-1].run_id)
        return HttpResponse.json(200, {"runs": [r.to_wire() for r in page], "cursor": cursor})

    async def _get(self, request: HttpRequest, run_id: str) -> HttpResponse:
        snapshot = await self.dispatcher.get(self._run_id(run_id))
        return HttpResponse(200, snapshot.to_json().encode())

    async def _event(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = self._body(_schema().SendEvent, self._json(request))
        snapshot = await self.dispatcher.send_event(
            self._run_id(run_id), body.payload, body.name, event_id=body.id
        )
        return HttpResponse.json(202, _summary(snapshot))

    async def _cancel(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = self._body(_schema().CancelRun, self._json(request, required=False))
        snapshot = await self.dispatcher.cancel(self._run_id(run_id), body.reason)
        return HttpResponse.json(200, _summary(snapshot))

    async def _retry(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = self._body(_schema().RetryRun, self._json(request, required=False))
        snapshot = await self.dispatcher.retry(
            self._run_id(run_id),
            reason=body.reason,
            force=body.force,
            by=request.header("x-refluxo-caller"),
        )
        return HttpResponse.json(200, _summary(snapshot))

    async def _rerun(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = self._body(_schema().RerunRun, self._json(request))
        new_id = self._new_run_id(body.id) if body.id is not None else None
        try:
            snapshot = await self.dispatcher.rerun(
                self._run_id(run_id),
                body.from_,
                input=body.input,
                new_id=new_id,
                by=request.header("x-refluxo-caller"),
            )
        except WorkflowNotFound as exc:
            raise HttpError(409, "workflow_not_deployed", str(exc)) from None
        except WorkflowMismatch as exc:
            raise HttpError(409, "not_rerunnable", str(exc)) from None
        return HttpResponse.json(201, _summary(snapshot))

    async def _export(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = self._body(_schema().ExportRun, self._json(request))
        try:
            snapshot = await self.dispatcher.export_run(
                self._run_id(run_id), version=body.version, to=body.to
            )
        except VersionConflict:
            raise HttpError(
                409, "run_changed", "the run changed since that version: read it and try again"
            ) from None
        return HttpResponse.json(200, {"snapshot": snapshot.to_dict()})

    async def _import_run(self, request: HttpRequest) -> HttpResponse:
        body = self._body(_schema().ImportRun, self._json(request))
        snapshot = body.snapshot
        self._new_run_id(snapshot.run_id)
        try:
            imported = await self.dispatcher.import_run(snapshot, source=body.from_)
        except ValueError as exc:
            if isinstance(exc, PayloadTooLarge):
                raise HttpError(413, "payload_too_large", str(exc)) from None
            if isinstance(exc, NotStrictJson):
                raise
            raise HttpError(400, "invalid_run_id", str(exc)) from None
        except (WorkflowNotFound, WorkflowMismatch) as exc:
            raise HttpError(409, "not_importable", str(exc)) from None
        return HttpResponse.json(201, _summary(imported))

    async def _timeline(self, request: HttpRequest, run_id: str) -> HttpResponse:
        from .timeline import timeline

        snapshot = await self.dispatcher.get(self._run_id(run_id))
        return HttpResponse.json(200, timeline(snapshot))

    async def _check_scheduler(self, request: HttpRequest, what: str) -> None:
        if self._dispatch_auth is None:
            raise HttpError(403, "forbidden", f"{what} is not enabled on this endpoint")
        if not await self._dispatch_auth(request):
            raise HttpError(401, "unauthorized", "the scheduler's credential is missing or wrong")

    async def _reconcile(self, request: HttpRequest) -> HttpResponse:
        """Schedule again the runs whose delivery was lost (see ``RunService.reconcile``).

        Called by the platform's timer (Cloud Scheduler) with the scheduler's credential.
        """
        await self._check_scheduler(request, "reconcile")
        body = self._body(_schema().Reconcile, self._json(request, required=False))
        options: dict[str, int] = {}
        if body.graceMs is not None:
            options["grace_ms"] = body.graceMs
        if body.limit is not None:
            options["limit"] = body.limit
        if not isinstance(self.dispatcher.store, DueRuns):
            store = type(self.dispatcher.store).__name__
            raise HttpError(501, "not_implemented", f"{store} cannot find due runs")
        scheduled = await self.dispatcher.reconcile(**options)
        return HttpResponse.json(200, {"scheduled": scheduled})

    async def _cron(self, request: HttpRequest) -> HttpResponse:
        """Start the run of one tick of a schedule (Cloud Scheduler's job calls this).

        The tick is the body's, else Cloud Scheduler's ``X-CloudScheduler-ScheduleTime``
        header, else the schedule's tick nearest to now; it must be a tick of the schedule
        and not in the future. The run's id derives from the tick: a call repeated for the
        same tick starts nothing.
        """
        from datetime import datetime

        from .schedules import last_tick, nearest_tick

        await self._check_scheduler(request, "cron")
        body = self._body(_schema().CronTick, self._json(request))
        try:
            plan = self.dispatcher.workflow(body.workflow).schedules[body.schedule]
        except (WorkflowNotFound, KeyError):
            raise HttpError(
                404, "unknown_schedule", f"no schedule {body.schedule!r} of {body.workflow!r}"
            ) from None
        now = self.dispatcher.clock()
        tick = body.tick
        stamp = request.header("x-cloudscheduler-scheduletime")
        if tick is None and stamp:
            try:
                moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                raise HttpError(400, "invalid_tick", "X-CloudScheduler-ScheduleTime") from None
            if moment.tzinfo is None:
                raise HttpError(400, "invalid_tick", "X-CloudScheduler-ScheduleTime needs a zone")
            tick = round(moment.timestamp() * 1000)
        if tick is None:
            tick = nearest_tick(plan, now)
        if tick is None or tick > now + 60_000 or last_tick(plan, tick) != tick:
            raise HttpError(400, "invalid_tick", "not a past tick of the schedule")
        snapshot, created = await self.dispatcher.fire_tick(body.workflow, body.schedule, tick)
        return HttpResponse.json(200, {"runId": snapshot.run_id, "created": created, "tick": tick})

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        await self._check_scheduler(request, "dispatch")
        data = self._json(request)
        try:
            message = DispatchMessage.model_validate(data)
        except ValidationError as exc:
            raise HttpError(400, "invalid_message", f"not a dispatch message: {exc}") from None
        self._run_id(message.run_id)
        result = await self.dispatcher.dispatch(message)
        return HttpResponse.json(
            _PUSH_QUEUE.decide(result.outcome).http_status,
            {
                "outcome": result.outcome,
                "runId": result.run_id,
                "version": result.version,
                "status": result.status,
            },
        )
