"""One HTTP API, written once, mounted by every runtime (local server, Cloud Function, Worker).

Routes::

    POST /workflows/{name}/runs   {"id"?: str, "input"?: any}    201 new run, 200 existing
    GET  /runs/{id}                                              200 the snapshot as JSON
    POST /runs/{id}/events        {"payload": any, "name"?, "id"?} 202 (id: safe retries)
    POST /runs/{id}/cancel        {"reason"?: str}               200
    POST /_dispatch               a DispatchMessage              200 with the outcome
    POST /_reconcile              {"graceMs"?: int, "limit"?: int} 200 {"scheduled": [ids]}
    GET  /healthz                                                200

Errors are JSON, ``{"error": {"code": ..., "message": ...}}``: 400 malformed JSON or fields,
401/403 credentials, 404 unknown route, workflow or run, 405 method, 409 finished run or id
taken, 413 body over the limit, 501 a store that cannot find due runs (``/_reconcile``), 503
transient backend failure (the platform delivers again).
Bad input changes nothing. A runtime converts its request into :class:`HttpRequest`, awaits
:meth:`HttpApi.handle`, and converts the :class:`HttpResponse` back.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .dispatcher import Dispatcher, check_run_id
from .errors import (
    BackendError,
    PayloadTooLarge,
    RunFinished,
    RunNotFound,
    VersionConflict,
    WorkflowMismatch,
    WorkflowNotFound,
)
from .model import DispatchMessage
from .ports import DueRuns

logger = logging.getLogger("refluxo.http")

DEFAULT_MAX_BODY_BYTES = 256 * 1024


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
        return cls(status, json.dumps(payload, separators=(",", ":")).encode())

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

    async def check(request: HttpRequest) -> bool:
        value = request.header("authorization") or ""
        scheme, _, given = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)

    return check


def _fields(
    data: dict[str, Any],
    *,
    optional_str: tuple[str, ...] = (),
    any_: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check a body's fields by hand (no model to build at import: cold starts pay for those)."""
    problems = [
        f"{name}: unknown field" for name in data if name not in (*optional_str, *any_, *required)
    ]
    problems += [f"{name}: missing" for name in required if name not in data]
    problems += [
        f"{name}: must be a string"
        for name in optional_str
        if data.get(name) is not None and not isinstance(data[name], str)
    ]
    if problems:
        raise HttpError(400, "invalid_request", "; ".join(problems))
    return data


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/workflows/(?P<name>[^/]+)/runs$"), "start"),
    ("GET", re.compile(r"^/runs/(?P<run_id>[^/]+)$"), "get"),
    ("POST", re.compile(r"^/runs/(?P<run_id>[^/]+)/events$"), "event"),
    ("POST", re.compile(r"^/runs/(?P<run_id>[^/]+)/cancel$"), "cancel"),
    ("POST", re.compile(r"^/_dispatch$"), "dispatch"),
    ("POST", re.compile(r"^/_reconcile$"), "reconcile"),
    ("GET", re.compile(r"^/healthz$"), "health"),
]


def _summary(snapshot: Any) -> dict[str, Any]:
    return {
        "workflowId": snapshot.workflow_id,
        "status": snapshot.status,
        "version": snapshot.version,
    }


class HttpApi:
    """The refluxo HTTP API over a :class:`Dispatcher`.

    Args:
        dispatcher: what the routes operate on.
        api_token: when set, the public routes require ``Authorization: Bearer <api_token>``.
        dispatch_auth: how ``/_dispatch`` authenticates the scheduler (a bearer token, or an
            OIDC check on Google Cloud). Without one, ``/_dispatch`` refuses every request.
        max_body_bytes: larger bodies are refused with 413 before they are parsed.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        api_token: str | None = None,
        dispatch_auth: Authenticator | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.dispatcher = dispatcher
        self._api_auth = bearer_token(api_token) if api_token else None
        self._dispatch_auth = dispatch_auth
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request; never raises."""
        try:
            return await self._route(request)
        except HttpError as exc:
            return HttpResponse.json(
                exc.status, {"error": {"code": exc.code, "message": exc.message}}
            )
        except BackendError as exc:
            level = logging.WARNING if exc.transient else logging.ERROR
            logger.log(level, "backend failure on %s %s: %s", request.method, request.path, exc)
            status, code = (503, "unavailable") if exc.transient else (500, "backend_error")
            return HttpResponse.error(status, code, str(exc))
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.path)
            return HttpResponse.error(500, "internal", "internal error")

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path = request.path.split("?", 1)[0]
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        allowed: list[str] = []
        for method, pattern, action in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            if method != request.method.upper():
                allowed.append(method)
                continue
            if len(request.body) > self.max_body_bytes:
                return HttpResponse.too_large(len(request.body), self.max_body_bytes)
            if action == "health":
                return HttpResponse.json(200, {"ok": True})
            if action == "dispatch":
                return await self._dispatch(request)
            if action == "reconcile":
                return await self._reconcile(request)
            if self._api_auth is not None and not await self._api_auth(request):
                raise HttpError(401, "unauthorized", "a valid bearer token is required")
            handler = getattr(self, f"_{action}")
            response: HttpResponse = await handler(request, **match.groupdict())
            return response
        if allowed:
            raise HttpError(405, "method_not_allowed", f"{path} takes {', '.join(allowed)}")
        raise HttpError(404, "not_found", f"no route for {request.method} {path}")

    # --- body parsing --------------------------------------------------------------------

    @staticmethod
    def _json(request: HttpRequest, *, required: bool = True) -> Any:
        if not request.body.strip():
            if required:
                raise HttpError(400, "invalid_json", "the body must be a JSON object")
            return {}
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(400, "invalid_json", "the body must be a JSON object")
        return data

    @staticmethod
    def _run_id(run_id: str) -> str:
        try:
            return check_run_id(run_id)
        except ValueError as exc:
            raise HttpError(400, "invalid_run_id", str(exc)) from None

    # --- routes --------------------------------------------------------------------------

    async def _start(self, request: HttpRequest, name: str) -> HttpResponse:
        body = _fields(self._json(request, required=False), optional_str=("id",), any_=("input",))
        run_id = self._run_id(body["id"]) if body.get("id") is not None else None
        try:
            snapshot, created = await self.dispatcher.start(
                name, run_id=run_id, input=body.get("input")
            )
        except WorkflowNotFound as exc:
            raise HttpError(404, "unknown_workflow", str(exc)) from None
        except WorkflowMismatch as exc:
            raise HttpError(409, "run_id_taken", str(exc)) from None
        except PayloadTooLarge as exc:
            raise HttpError(413, "payload_too_large", str(exc)) from None
        return HttpResponse.json(201 if created else 200, _summary(snapshot))

    async def _get(self, request: HttpRequest, run_id: str) -> HttpResponse:
        try:
            snapshot = await self.dispatcher.get(self._run_id(run_id))
        except RunNotFound as exc:
            raise HttpError(404, "unknown_run", str(exc)) from None
        return HttpResponse(200, snapshot.to_json().encode())

    async def _event(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = _fields(self._json(request), optional_str=("name", "id"), required=("payload",))
        try:
            snapshot = await self.dispatcher.send_event(
                self._run_id(run_id), body["payload"], body.get("name"), event_id=body.get("id")
            )
        except RunNotFound as exc:
            raise HttpError(404, "unknown_run", str(exc)) from None
        except RunFinished as exc:
            raise HttpError(409, "run_finished", str(exc)) from None
        except PayloadTooLarge as exc:
            raise HttpError(413, "payload_too_large", str(exc)) from None
        except VersionConflict as exc:
            raise HttpError(503, "busy", f"the run kept changing; try again ({exc})") from None
        return HttpResponse.json(202, _summary(snapshot))

    async def _cancel(self, request: HttpRequest, run_id: str) -> HttpResponse:
        body = _fields(self._json(request, required=False), optional_str=("reason",))
        try:
            snapshot = await self.dispatcher.cancel(self._run_id(run_id), body.get("reason"))
        except RunNotFound as exc:
            raise HttpError(404, "unknown_run", str(exc)) from None
        except RunFinished as exc:
            raise HttpError(409, "run_finished", str(exc)) from None
        except VersionConflict as exc:
            raise HttpError(503, "busy", f"the run kept changing; try again ({exc})") from None
        return HttpResponse.json(200, _summary(snapshot))

    async def _check_scheduler(self, request: HttpRequest, what: str) -> None:
        if self._dispatch_auth is None:
            raise HttpError(403, "forbidden", f"{what} is not enabled on this endpoint")
        if not await self._dispatch_auth(request):
            raise HttpError(401, "unauthorized", "the scheduler's credential is missing or wrong")

    async def _reconcile(self, request: HttpRequest) -> HttpResponse:
        """Schedule again the runs whose delivery was lost (see ``Dispatcher.reconcile``).

        Called by the platform's timer (Cloud Scheduler) with the scheduler's credential.
        """
        await self._check_scheduler(request, "reconcile")
        body = self._json(request, required=False)
        limits = {"graceMs": (0, 30 * 24 * 3600 * 1000), "limit": (1, 1000)}
        problems = [f"{name}: unknown field" for name in body if name not in limits]
        for name, (low, high) in limits.items():
            value = body.get(name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high
            ):
                problems.append(f"{name}: must be an integer from {low} to {high}")
        if problems:
            raise HttpError(400, "invalid_request", "; ".join(problems))
        options: dict[str, int] = {}
        if body.get("graceMs") is not None:
            options["grace_ms"] = body["graceMs"]
        if body.get("limit") is not None:
            options["limit"] = body["limit"]
        if not isinstance(self.dispatcher.store, DueRuns):
            store = type(self.dispatcher.store).__name__
            raise HttpError(501, "not_implemented", f"{store} cannot find due runs")
        scheduled = await self.dispatcher.reconcile(**options)
        return HttpResponse.json(200, {"scheduled": scheduled})

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        await self._check_scheduler(request, "dispatch")
        data = self._json(request)
        try:
            message = DispatchMessage.model_validate(data)
        except ValidationError as exc:
            raise HttpError(400, "invalid_message", f"not a dispatch message: {exc}") from None
        result = await self.dispatcher.dispatch(message)
        return HttpResponse.json(
            200,
            {
                "outcome": result.outcome,
                "runId": result.run_id,
                "version": result.version,
                "status": result.status,
            },
        )
