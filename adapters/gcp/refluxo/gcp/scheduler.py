"""The :class:`Scheduler` on Cloud Tasks: one named HTTP task per :class:`DispatchMessage`.

Each message becomes a task that POSTs the message's JSON to the function's ``/_dispatch``
URL, at ``schedule_time`` when the message has a time. The task is named after the message's
``key``, so Cloud Tasks itself collapses a repeated schedule: creating a task whose name exists
(or existed recently: Cloud Tasks keeps a name reserved for about an hour after the task ran or
was deleted) answers ALREADY_EXISTS, which this adapter counts as success.

Task names allow only ``[A-Za-z0-9_-]`` (up to 500 characters) and Cloud Tasks works best when
names do not share sequential prefixes. A name is therefore 32 hex digits of the key's SHA-256
(128 bits: distinct keys get distinct names, as distinct as UUIDs are) followed by the key
with every other character replaced by ``_``, for people reading the queue.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import urllib.parse
from collections.abc import Callable, Mapping

from google.api_core import exceptions as gexc
from google.api_core import retry_async
from google.cloud import tasks_v2

from refluxo.core.model import DispatchMessage, now_ms
from refluxo.core.ports import Scheduler

from ._errors import BACKEND_ERRORS, scheduler_error

__all__ = ["MAX_DELAY_MS", "CloudTasksScheduler", "task_id"]

MAX_DELAY_MS = 30 * 24 * 3600 * 1000 - 3600 * 1000
"""Cloud Tasks refuses a ``schedule_time`` more than 30 days ahead (by its own clock); an hour
less leaves room for clocks that differ. Longer waits take hops."""

_QUEUE = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[^/]+")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 32
_READABLE_CHARS = 200
_DISPATCH_PATH = "/_dispatch"

# Named tasks make create_task idempotent: after a timeout the task may exist, and trying
# again then answers ALREADY_EXISTS, which is success. So transient failures are retried here.
_RETRY = retry_async.AsyncRetry(
    predicate=retry_async.if_exception_type(
        gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError
    ),
    initial=0.1,
    maximum=2.0,
    multiplier=2.0,
    timeout=15.0,
)
_CALL_TIMEOUT = 10.0


def task_id(key: str) -> str:
    """The Cloud Tasks task id for a message key: valid, deterministic, and unique per key."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    readable = _NOT_IN_NAME.sub("_", key)[:_READABLE_CHARS]
    return f"{digest}-{readable}"


def default_audience(url: str) -> str:
    """The OIDC audience for a dispatch URL: the URL the function is served at.

    That is ``url`` without its query and without a final ``/_dispatch``: the service URL
    Cloud Run and Cloud Functions (``https://REGION-PROJECT.cloudfunctions.net/NAME``) check
    ID tokens against.
    """
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(_DISPATCH_PATH):
        path = path[: -len(_DISPATCH_PATH)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class CloudTasksScheduler(Scheduler):
    """Schedules each message as a named HTTP task on a Cloud Tasks queue.

    Args:
        client: a ready ``tasks_v2.CloudTasksAsyncClient``.
        queue: the queue's full name, ``projects/P/locations/L/queues/Q``.
        url: the function's ``/_dispatch`` URL, which the tasks POST to.
        service_account: when set, Cloud Tasks attaches an OIDC ID token for this service
            account (``Authorization: Bearer ...``), which the receiving side verifies.
        audience: the token's audience; defaults to :func:`default_audience` of ``url``.
        headers: extra HTTP headers for every task, e.g. a shared-secret header for
            deployments without OIDC (whoever may view the queue's tasks in full can read
            them). ``Content-Type`` is always ``application/json``.
        clock: epoch milliseconds now, for the ``max_delay_ms`` check.

    Raises:
        ValueError: a malformed queue name or URL; an ``audience`` without a
            ``service_account``; an ``Authorization`` header together with a
            ``service_account`` (Cloud Tasks would replace it with the token).
    """

    def __init__(
        self,
        client: tasks_v2.CloudTasksAsyncClient,
        *,
        queue: str,
        url: str,
        service_account: str | None = None,
        audience: str | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if not _QUEUE.fullmatch(queue):
            raise ValueError(f"queue must be projects/P/locations/L/queues/Q, got {queue!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be an absolute http(s) URL, got {url!r}")
        if audience is not None and service_account is None:
            raise ValueError("an OIDC audience needs a service_account to sign the token")
        extra = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
        if service_account is not None and any(k.lower() == "authorization" for k in extra):
            raise ValueError(
                "an Authorization header and a service_account exclude each other: Cloud Tasks "
                "puts the OIDC token in Authorization"
            )
        self._client = client
        self.queue = queue
        self.url = url
        self.service_account = service_account
        self.audience = (audience or default_audience(url)) if service_account else None
        self.headers = {**extra, "Content-Type": "application/json"}
        self._clock = clock

    @property
    def max_delay_ms(self) -> int:
        return MAX_DELAY_MS

    def task_name(self, message: DispatchMessage) -> str:
        """The full name of the task that delivers ``message``."""
        return f"{self.queue}/tasks/{task_id(message.key)}"

    def build_task(self, message: DispatchMessage, *, at: int | None = None) -> tasks_v2.Task:
        """The task that delivers ``message`` at ``at`` (epoch ms; None or past: now)."""
        request = tasks_v2.HttpRequest(
            http_method=tasks_v2.HttpMethod.POST,
            url=self.url,
            headers=self.headers,
            body=message.to_json().encode("utf-8"),
        )
        if self.service_account is not None:
            request.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.service_account, audience=self.audience
            )
        task = tasks_v2.Task(name=self.task_name(message), http_request=request)
        if at is not None and at > self._clock():
            seconds, millis = divmod(at, 1000)
            task.schedule_time = dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(
                milliseconds=millis
            )
        return task

    async def schedule(self, message: DispatchMessage, *, at: int | None = None) -> None:
        if at is not None and (ahead := at - self._clock()) > MAX_DELAY_MS:
            raise ValueError(f"at is {ahead} ms from now, over the maximum of {MAX_DELAY_MS}")
        task = self.build_task(message, at=at)
        request = tasks_v2.CreateTaskRequest(parent=self.queue, task=task)
        try:
            await self._client.create_task(request=request, retry=_RETRY, timeout=_CALL_TIMEOUT)
        except BACKEND_ERRORS as exc:
            if isinstance(exc, gexc.AlreadyExists):
                return  # scheduled before (or just now, by a retry): collapsed into one
            raise scheduler_error(exc, f"schedule {message.key!r}") from exc
