"""The Worker's composition root and handlers: HTTP API on ``fetch``, steps on ``queue``, the
workflows' schedules and the reconciler on ``scheduled``.

A Worker's main module only delegates (``deploy/cloudflare/entry.py``)::

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return await worker.fetch(request, self.env)

        async def queue(self, batch, env, ctx):  # workerd passes all three
            await worker.queue(batch, self.env)

        async def scheduled(self, controller, env, ctx):
            await worker.scheduled(controller, self.env)

Configuration comes from the Worker's vars and secrets (``REFLUXO_`` prefix):

===================================  =====================================================
``REFLUXO_APP``                      the workflows, ``module`` or ``module:attribute`` (required)
``REFLUXO_STORE``                    ``d1`` (default: strictly consistent) or ``kv`` (see
                                     :class:`~refluxo.cloudflare.store.KVStateStore`'s limits;
                                     a queue delivery writes a run's key once, at its end:
                                     :mod:`refluxo.cloudflare.delivery`)
``REFLUXO_D1_BINDING``               the D1 binding's name (default ``DB``)
``REFLUXO_D1_TABLE``                 the runs table (default ``refluxo_runs``)
``REFLUXO_KV_BINDING``               the KV binding's name (default ``STATE``)
``REFLUXO_KV_PREFIX``                the runs' key prefix, ending in ``/`` (default ``run:``;
                                     see :class:`~refluxo.cloudflare.store.KVStateStore`)
``REFLUXO_QUEUE_BINDING``            the Queues producer binding (default ``STEPS``); this Worker
                                     must also be that queue's consumer
``REFLUXO_DEAD_LETTER_QUEUE``        the steps queue's dead-letter queue, which this Worker
                                     also consumes: each message there is handed to
                                     ``RunService.dead_lettered`` (the run is scheduled again)
``REFLUXO_RECONCILE_GRACE_SECONDS``  how long a run may be due before the cron trigger
                                     schedules it again (300)
``REFLUXO_RECONCILE_LIMIT``          runs scheduled again per cron trigger, at most (100)
``REFLUXO_API_TOKEN``                a secret: the public routes require ``Bearer`` it;
                                     without it they answer 403, unless
                                     ``REFLUXO_PUBLIC_API`` is ``1``
``REFLUXO_PUBLIC_API``               ``1``: serve the public routes to anyone, without a token
``REFLUXO_GLOBALS``                  JSON object passed to executors as ``globals`` (a secret)
``REFLUXO_MAX_BODY_BYTES``           request body limit (default 262144)
``REFLUXO_RETRY_BASE_SECONDS``       first redelivery delay after a transient failure (1)
``REFLUXO_RETRY_MAX_SECONDS``        longest redelivery delay (300)
``REFLUXO_LOG_LEVEL``                ``DEBUG``, ``INFO`` (default), ``WARNING``, ``ERROR``
===================================  =====================================================

``/_dispatch`` and ``/_reconcile`` are refused (403): on Cloudflare steps arrive through the
queue consumer only, and the reconciler runs on the cron trigger (``scheduled``).

How a queue message ends:

========================================================  ====================================
the dispatcher handled it (any outcome: stepped, stale,   ``ack()``
early, waiting, finished, unknown run, refused...)
its body is not a DispatchMessage                         ``ack()``, logged as an error: it
                                                          could never succeed
a transient BackendError (KV 429, D1 reset, ...)          ``retry(delaySeconds=base * 2 **
                                                          (attempts - 1))``, capped
any other failure (a permanent backend error, a bug)      ``retry(delaySeconds=max)``, logged
                                                          with its traceback; after the
                                                          queue's ``max_retries`` the message
                                                          goes to its dead-letter queue
========================================================  ====================================

Nothing here imports ``workers`` or ``js`` at import time; ``fetch`` imports
``workers.Response`` when it answers.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from refluxo.core import BackendError, RunService, Workflow
from refluxo.core.delivery import Redelivery
from refluxo.core.dispatcher import DispatchResult
from refluxo.core.http import HttpApi, HttpRequest, HttpResponse, LimitedBody
from refluxo.core.logs import configure_logging
from refluxo.core.model import DispatchMessage, now_ms
from refluxo.core.ports import Scheduler, StateStore
from refluxo.core.settings import ConfigurationError, Environment, Settings, build_api
from refluxo.core.settings import load_app as _load_app

from .scheduler import MAX_DELAY_SECONDS, QueuesScheduler
from .store import D1StateStore, KVStateStore

if TYPE_CHECKING:
    from .delivery import HeldWrites

__all__ = [
    "ConfigurationError",
    "RefluxoWorker",
    "WorkerSettings",
    "decode_message",
    "fetch",
    "load_app",
    "queue",
    "scheduled",
    "to_http_request",
    "to_workers_response",
]

logger = logging.getLogger("refluxo.cloudflare")

Decision = Literal["ack", "retry"]


class WorkerSettings(Settings):
    """Everything the Worker needs; see the module docstring for the vars."""

    store: Literal["d1", "kv"] = "d1"
    d1_binding: str = "DB"
    d1_table: str = "refluxo_runs"
    kv_binding: str = "STATE"
    kv_prefix: str = "run:"
    queue_binding: str = "STEPS"
    dead_letter_queue: str | None = None
    reconcile_grace_seconds: int = 300
    reconcile_limit: int = 100
    retry_base_seconds: int = 1
    retry_max_seconds: int = 300

    @classmethod
    def read_env(cls, env: Environment) -> dict[str, Any]:
        """The shared settings, then the bindings' names, the reconciler's and the backoff's."""
        store = (env.text("REFLUXO_STORE") or "d1").lower()
        if store not in ("d1", "kv"):
            raise ConfigurationError(f"REFLUXO_STORE must be 'd1' or 'kv', got {store!r}")
        return {
            **super().read_env(env),
            "store": store,
            "d1_binding": env.text("REFLUXO_D1_BINDING") or "DB",
            "d1_table": env.text("REFLUXO_D1_TABLE") or "refluxo_runs",
            "kv_binding": env.text("REFLUXO_KV_BINDING") or "STATE",
            "kv_prefix": env.text("REFLUXO_KV_PREFIX") or "run:",
            "queue_binding": env.text("REFLUXO_QUEUE_BINDING") or "STEPS",
            "dead_letter_queue": env.text("REFLUXO_DEAD_LETTER_QUEUE"),
            "reconcile_grace_seconds": env.number(
                "REFLUXO_RECONCILE_GRACE_SECONDS", 300, 0, 86_400
            ),
            "reconcile_limit": env.number("REFLUXO_RECONCILE_LIMIT", 100, 1, 1000),
            "retry_base_seconds": env.number("REFLUXO_RETRY_BASE_SECONDS", 1, 0, MAX_DELAY_SECONDS),
            "retry_max_seconds": env.number("REFLUXO_RETRY_MAX_SECONDS", 300, 0, MAX_DELAY_SECONDS),
        }


_APPS: dict[str, list[Workflow]] = {}
"""Loaded workflows by app spec: built once per isolate, not once per request."""

_logging_level: str | None = None


def configure_worker_logging(level: str) -> None:
    """JSON lines for Workers Logs: below WARNING on stdout, the rest on stderr.

    A Python Worker's stdout becomes ``console.log`` and its stderr ``console.error``, so
    the split gives each line its level in Cloudflare's log viewers. Idempotent.
    """
    configure_logging("json", getattr(logging, level), split_streams=True)


def load_app(spec: str) -> list[Workflow]:
    """The workflows ``REFLUXO_APP`` names (:func:`refluxo.core.settings.load_app`), loaded
    once per isolate."""
    if spec not in _APPS:
        _APPS[spec] = _load_app(spec)
    return _APPS[spec]


def _binding(env: Any, name: str, what: str) -> Any:
    binding = getattr(env, name, None)
    if binding is None:
        raise ConfigurationError(f"the Worker has no {what} binding named {name!r}")
    return binding


def decode_message(body: Any) -> DispatchMessage:
    """The DispatchMessage in a queue message body (an object, or JSON text or bytes).

    Raises:
        ValueError: the body is not a DispatchMessage.
    """
    if hasattr(body, "to_py"):  # a JS value the SDK left unconverted
        body = body.to_py()
    try:
        if isinstance(body, str | bytes | bytearray):
            return DispatchMessage.model_validate_json(body)
        if isinstance(body, Mapping):
            return DispatchMessage.model_validate(dict(body))
    except ValidationError as exc:
        raise ValueError(f"not a dispatch message: {exc}") from None
    raise ValueError(f"not a dispatch message: a {type(body).__name__} body")


async def to_http_request(request: Any, max_body_bytes: int) -> HttpRequest | HttpResponse:
    """Convert a ``workers.Request``; a 413 answer instead when the body is over the limit.

    The body is not read when its declared length is over the limit (or for GET and HEAD);
    without a Content-Length (a chunked body) it is read from its stream only until it passes
    the limit, then the stream is cancelled.
    """
    method = str(getattr(request.method, "value", request.method)).upper()
    url = urlsplit(str(request.url))
    path = url.path + (f"?{url.query}" if url.query else "")
    headers = {str(k): str(v) for k, v in request.headers.items()}
    length = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
    body = LimitedBody(max_body_bytes, length)
    refused = body.refusal()
    if refused is not None:
        return refused
    if method in ("GET", "HEAD"):
        pass
    elif body.declared is not None:
        body.add(bytes(await request.bytes()))
    else:
        refused = await _read_at_most(getattr(request, "body", None), body)
        if refused is not None:
            return refused
    return HttpRequest(method=method, path=path, body=body.bytes(), headers=headers)


async def _read_at_most(stream: Any, body: LimitedBody) -> HttpResponse | None:
    """Read a ``ReadableStream`` (None: no body) into ``body``; its 413 once past the limit."""
    if stream is None:
        return None
    reader = stream.getReader()
    while True:
        result = await reader.read()
        if result.done:
            return None
        value = result.value
        if not body.add(value.to_bytes() if hasattr(value, "to_bytes") else bytes(value)):
            await reader.cancel()
            return body.refusal()


def to_workers_response(response: HttpResponse) -> Any:
    """A ``workers.Response`` for an :class:`HttpResponse`."""
    # Imported here: the module exists only inside the Python Workers runtime.
    workers = importlib.import_module("workers")
    return workers.Response(response.body, status=response.status, headers=dict(response.headers))


class RefluxoWorker:
    """The dispatcher and HTTP API of one Worker invocation, and its two handlers.

    Build it with :meth:`from_env` in each handler; the loaded workflows are cached per
    isolate, the rest is a few small objects around the bindings.

    Args:
        dispatcher: the dispatcher the handlers drive.
        settings: the configuration (body limit, redelivery backoff).
    """

    def __init__(
        self,
        dispatcher: RunService,
        settings: WorkerSettings,
        *,
        api: HttpApi | None = None,
        held: HeldWrites | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.held = held
        """On KV: the writes each queue delivery holds until it ends (see
        :mod:`refluxo.cloudflare.delivery`); None writes every save at once."""
        # Queues dead-letters after the consumer's max_retries, so no max_attempts here.
        self.redelivery = Redelivery(
            base_ms=settings.retry_base_seconds * 1000,
            max_ms=settings.retry_max_seconds * 1000,
            slow_permanent=True,
        )
        self.api = api or HttpApi(
            dispatcher,
            api_token=settings.api_token,
            dispatch_auth=None,
            max_body_bytes=settings.max_body_bytes,
        )

    @classmethod
    def from_env(
        cls,
        env: Any,
        *,
        settings: WorkerSettings | None = None,
        workflows: Iterable[Workflow] | None = None,
        store: StateStore | None = None,
        scheduler: Scheduler | None = None,
    ) -> RefluxoWorker:
        """The composition root: settings from ``env``'s vars, adapters from its bindings.

        Args:
            env: the Worker's ``env`` (``self.env`` of the entrypoint).
            settings: the settings, when already read from ``env``.
            workflows: the workflows to host, instead of loading ``REFLUXO_APP``.
            store: a state store to use instead of the one ``REFLUXO_STORE`` names.
            scheduler: a scheduler to use instead of the queue binding's.

        Raises:
            ConfigurationError: a var is malformed, a binding or the app is missing, or the
                workflows need what the chosen store lacks.
        """
        settings = settings or WorkerSettings.from_env(env)
        hosted = list(workflows) if workflows is not None else load_app(settings.app)
        try:
            if store is None and settings.store == "kv":
                store = KVStateStore(
                    _binding(env, settings.kv_binding, "KV namespace"), prefix=settings.kv_prefix
                )
            elif store is None:
                store = D1StateStore(
                    _binding(env, settings.d1_binding, "D1 database"), table=settings.d1_table
                )
            if scheduler is None:
                scheduler = QueuesScheduler(_binding(env, settings.queue_binding, "queue producer"))
            # KV takes about one write per second to a key: a delivery that chains steps of
            # a run writes its key once, when it ends.
            held = None
            if isinstance(store, KVStateStore):
                from .delivery import HeldWrites  # here: a Worker on D1 does not import it

                held = HeldWrites(store, scheduler)
                store, scheduler = held.store, held.scheduler
            api = build_api(hosted, store, scheduler, settings)
        except ConfigurationError:
            raise
        except ValueError as exc:  # a bad table name; archiving workflows on KV
            raise ConfigurationError(str(exc)) from exc
        return cls(api.dispatcher, settings, api=api, held=held)

    # --- fetch -----------------------------------------------------------------------------

    async def fetch(self, request: Any) -> Any:
        """Answer a ``workers.Request`` with a ``workers.Response``."""
        return to_workers_response(await self.answer(request))

    async def answer(self, request: Any) -> HttpResponse:
        """The API's answer to a ``workers.Request``.

        Without ``REFLUXO_API_TOKEN`` and without ``REFLUXO_PUBLIC_API=1``, every route but
        ``/healthz`` and ``/openapi.json`` answers 403: a Worker is reachable by anyone, so an
        API without a token is served only when its deployer said so.
        """
        if self.settings.api_token is None and not self.settings.public_api:
            path = urlsplit(str(request.url)).path.rstrip("/")
            if path not in _OPEN_PATHS:
                return HttpResponse.error(
                    403,
                    "api_not_configured",
                    "this Worker has no REFLUXO_API_TOKEN; set one, or set REFLUXO_PUBLIC_API=1 "
                    "to serve the API to anyone",
                )
        converted = await to_http_request(request, self.settings.max_body_bytes)
        if isinstance(converted, HttpResponse):
            return converted
        return await self.api.handle(converted)

    # --- queue -----------------------------------------------------------------------------

    async def queue(self, batch: Any) -> None:
        """Handle a batch from the steps queue: one dispatch per message, each acked or retried.

        Messages are handled one after the other, so two deliveries of one run in a batch do
        not race each other. A batch from the dead-letter queue (``REFLUXO_DEAD_LETTER_QUEUE``)
        goes to :meth:`handle_dead_letter` instead.
        """
        queue_name = str(getattr(batch, "queue", "") or "")
        dead = self.settings.dead_letter_queue
        for message in batch.messages:
            if dead is not None and queue_name == dead:
                await self.handle_dead_letter(message, queue_name)
            else:
                await self.handle_message(message)

    async def handle_dead_letter(self, message: Any, queue_name: str) -> Decision:
        """A delivery the steps queue gave up on: schedule the run again if it needs it.

        ``ack()`` once :meth:`RunService.dead_lettered` has decided (a malformed body too);
        ``retry()`` with backoff on a backend failure, so the dead letter is not lost.
        """
        attempts = _attempts(message)
        fields: dict[str, Any] = {"messageId": str(getattr(message, "id", "")), "queue": queue_name}
        try:
            dispatch_message = decode_message(message.body)
        except ValueError as exc:
            logger.error("dropped a malformed dead letter: %s", exc, extra={"refluxo": fields})
            message.ack()
            return "ack"
        try:
            await self.dispatcher.dead_lettered(
                dispatch_message, f"dead-lettered by the steps queue (in {queue_name})"
            )
        except Exception as exc:
            decision = self.redelivery.decide(exc, attempts)
            delay = decision.delay_seconds
            logger.warning(
                "dead letter %s not handled, redelivered in %s s: %s",
                dispatch_message.key,
                delay,
                exc,
                extra={"refluxo": {**fields, "retryInSeconds": delay}},
            )
            message.retry(delaySeconds=delay)
            return "retry"
        message.ack()
        return "ack"

    # --- scheduled -------------------------------------------------------------------------

    async def fire_schedules(self, scheduled_time: int) -> list[str]:
        """Start the runs of the schedules' ticks that fall in the minute of ``scheduled_time``.

        A cron trigger fires at the start of a minute (``controller.scheduledTime``); every
        schedule whose tick is that minute starts that tick's run. Two triggers of one minute
        (the reconciler's and a schedule's, or one delivered twice) start it once: the run id
        derives from the tick. Returns the ids of the runs started now.
        """
        from refluxo.core.schedules import last_tick  # only the cron trigger needs it

        started: list[str] = []
        for workflow, name, plan in self.dispatcher.schedules():
            tick = last_tick(plan, scheduled_time)
            if tick is None or scheduled_time - tick >= 60_000:
                continue
            snapshot, created = await self.dispatcher.fire_tick(workflow, name, tick)
            if created:
                started.append(snapshot.run_id)
        return started

    async def scheduled(self) -> list[str]:
        """The cron trigger: schedule again the runs due for longer than the grace period.

        Runs whose delivery was lost (dead-lettered and dropped, or never sent) are found by
        their stored due time (:meth:`RunService.reconcile`). Returns their ids.
        """
        return await self.dispatcher.reconcile(
            grace_ms=self.settings.reconcile_grace_seconds * 1000,
            limit=self.settings.reconcile_limit,
        )

    def backoff_seconds(self, attempts: int, *, transient: bool) -> int:
        """The redelivery delay after a failed attempt (``attempts`` counts from 1)."""
        return self.redelivery.backoff_ms(attempts, transient=transient) // 1000

    async def handle_message(self, message: Any) -> Decision:
        """Dispatch one queue message, then ``ack()`` or ``retry()`` it; returns which."""
        attempts = _attempts(message)
        fields: dict[str, Any] = {
            "messageId": str(getattr(message, "id", "")),
            "attempts": attempts,
        }
        try:
            dispatch_message = decode_message(message.body)
        except ValueError as exc:
            logger.error("dropped a malformed queue message: %s", exc, extra={"refluxo": fields})
            message.ack()
            return "ack"
        fields.update(run=dispatch_message.run_id, version=dispatch_message.version)
        result: DispatchResult | Exception
        try:
            if self.held is None:
                result = await self.dispatcher.dispatch(dispatch_message)
            else:
                async with self.held.delivery():
                    result = await self.dispatcher.dispatch(dispatch_message)
        except Exception as exc:  # any failure: the decision says when to deliver again
            result = exc
        decision = self.redelivery.decide(
            result if isinstance(result, Exception) else result.outcome, attempts
        )
        if isinstance(result, Exception):
            delay = decision.delay_seconds
            extra = {"refluxo": {**fields, "retryInSeconds": delay}}
            if not isinstance(result, BackendError):
                logger.error(
                    "delivery %s raised, redelivered in %s s",
                    dispatch_message.key,
                    delay,
                    exc_info=result,  # outside the except block: name the exception
                    extra=extra,
                )
            else:
                logger.log(
                    logging.WARNING if decision.transient else logging.ERROR,
                    "delivery %s failed (%s), redelivered in %s s: %s",
                    dispatch_message.key,
                    "transient" if decision.transient else "permanent",
                    delay,
                    result,
                    extra=extra,
                )
            # The queue dead-letters after its max_retries: this policy sets no max_attempts.
            message.retry(delaySeconds=delay)
            return "retry"
        if result.outcome != "stepped":  # a step is logged by the dispatcher itself
            logger.info(
                "delivery %s: %s",
                dispatch_message.key,
                result.outcome,
                extra={"refluxo": {**fields, "outcome": result.outcome, "status": result.status}},
            )
        message.ack()
        return "ack"


_OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
"""What a Worker without an API token still answers."""


def _attempts(message: Any) -> int:
    attempts = getattr(message, "attempts", 1)
    try:
        return max(int(attempts), 1)
    except (TypeError, ValueError):
        return 1


def _worker(env: Any) -> RefluxoWorker:
    """The Worker of one invocation; sets up the JSON logs on first use in the isolate."""
    global _logging_level
    settings = WorkerSettings.from_env(env)
    if _logging_level != settings.log_level:
        configure_worker_logging(settings.log_level)
        _logging_level = settings.log_level
    return RefluxoWorker.from_env(env, settings=settings)


async def fetch(request: Any, env: Any) -> Any:
    """A Worker's ``fetch`` handler: build the Worker from ``env`` and answer ``request``.

    A configuration error is logged and answered with a JSON 500 naming no secret.
    """
    try:
        worker = _worker(env)
    except ConfigurationError as exc:
        logging.getLogger("refluxo.cloudflare").error("misconfigured Worker: %s", exc)
        return to_workers_response(
            HttpResponse.json(500, {"error": {"code": "misconfigured", "message": str(exc)}})
        )
    return await worker.fetch(request)


async def queue(batch: Any, env: Any) -> None:
    """A Worker's ``queue`` handler: build the Worker from ``env`` and handle ``batch``.

    A configuration error is logged and raised, so the platform delivers the batch again.
    """
    try:
        worker = _worker(env)
    except ConfigurationError as exc:
        logging.getLogger("refluxo.cloudflare").error("misconfigured Worker: %s", exc)
        raise
    await worker.queue(batch)


async def scheduled(controller: Any, env: Any) -> None:
    """A Worker's ``scheduled`` handler (a cron trigger): start the runs of the schedules'
    ticks of ``controller.scheduledTime``'s minute, then reconcile the runs of ``env``.

    A failure is logged and raised, so the platform records the invocation as failed; the next
    trigger tries again.
    """
    try:
        worker = _worker(env)
    except ConfigurationError as exc:
        logging.getLogger("refluxo.cloudflare").error("misconfigured Worker: %s", exc)
        raise
    at = getattr(controller, "scheduledTime", None)
    at = int(at) if isinstance(at, int | float) else now_ms()
    fired = await worker.fire_schedules(at)
    if fired:
        logger.info("cron: started %s", ", ".join(fired), extra={"refluxo": {"started": fired}})
    found = await worker.scheduled()
    logger.info(
        "cron %s: %d run(s) scheduled again",
        getattr(controller, "cron", "?"),
        len(found),
        extra={"refluxo": {"reconciled": found}},
    )
