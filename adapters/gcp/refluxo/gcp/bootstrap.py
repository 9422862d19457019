"""The composition root on Google Cloud: configuration from the environment, adapters from it.

Environment variables (``REFLUXO_`` prefix):

===========================  ============================================================
``REFLUXO_APP``              the workflows, ``module`` or ``module:attribute`` (required)
``REFLUXO_PROJECT``          project id (default: ``GOOGLE_CLOUD_PROJECT``)
``REFLUXO_LOCATION``         Cloud Tasks location, e.g. ``europe-west1``
``REFLUXO_QUEUE``            Cloud Tasks queue name
``REFLUXO_COLLECTION``       Firestore collection for runs (default ``refluxo_runs``)
``REFLUXO_FUNCTION_URL``     this function's URL; tasks are sent to ``<url>/_dispatch``
``REFLUXO_SERVICE_ACCOUNT``  the account Cloud Tasks signs OIDC tokens as; when set,
                             ``/_dispatch`` requires such a token
``REFLUXO_TRUST_PLATFORM_AUTH``  ``1`` when the function refuses unauthenticated calls (as the
                             deploy script sets it up): Google's front end has then checked
                             the token's signature, and strips it; the claims are checked here
``REFLUXO_DISPATCH_TOKEN``   a shared secret for ``/_dispatch`` instead of OIDC (emulators)
``REFLUXO_API_TOKEN``        when set, the public routes require this bearer token
``REFLUXO_GLOBALS``          JSON object passed to executors as ``globals`` (secrets)
``REFLUXO_MAX_BODY_BYTES``   request body limit (default 262144)
===========================  ============================================================

The emulators are used when their usual variables are set: ``FIRESTORE_EMULATOR_HOST`` (read by
the Firestore client itself) and ``CLOUD_TASKS_EMULATOR_HOST``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refluxo.core import RunService, Workflow
from refluxo.core.dispatcher import load_workflows
from refluxo.core.errors import DefinitionError
from refluxo.core.http import DEFAULT_MAX_BODY_BYTES, Authenticator, HttpApi

from .auth import DISPATCH_TOKEN_HEADER, OidcVerifier, shared_secret


class ConfigurationError(ValueError):
    """A required setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class GcpSettings:
    """Everything the Google Cloud runtime needs; see the module docstring for the variables."""

    app: str
    project: str
    location: str
    queue: str
    function_url: str
    collection: str = "refluxo_runs"
    service_account: str | None = None
    trust_platform_auth: bool = False
    dispatch_token: str | None = None
    api_token: str | None = None
    globals: Any = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    tasks_emulator_host: str | None = None

    @property
    def queue_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/queues/{self.queue}"

    @property
    def dispatch_url(self) -> str:
        return self.function_url.rstrip("/") + "/_dispatch"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GcpSettings:
        """The settings from ``env`` (default: the process environment).

        Raises:
            ConfigurationError: naming every required variable that is missing or empty, or
                the variable whose value is malformed; also when neither
                ``REFLUXO_SERVICE_ACCOUNT`` nor ``REFLUXO_DISPATCH_TOKEN`` is set.
        """
        env = os.environ if env is None else env
        missing: list[str] = []

        def need(name: str, fallback: str | None = None) -> str:
            value = env.get(name) or (env.get(fallback) if fallback else None)
            if not value:
                missing.append(f"{name} (or {fallback})" if fallback else name)
                return ""
            return value

        app = need("REFLUXO_APP")
        project = need("REFLUXO_PROJECT", "GOOGLE_CLOUD_PROJECT")
        location = need("REFLUXO_LOCATION")
        queue = need("REFLUXO_QUEUE")
        function_url = need("REFLUXO_FUNCTION_URL")
        if missing:
            raise ConfigurationError(f"not set: {', '.join(missing)}")

        raw_globals = env.get("REFLUXO_GLOBALS")
        try:
            globals_ = json.loads(raw_globals) if raw_globals else None
        except ValueError as exc:
            raise ConfigurationError(f"REFLUXO_GLOBALS is not valid JSON: {exc}") from None
        raw_max = env.get("REFLUXO_MAX_BODY_BYTES")
        try:
            max_body_bytes = int(raw_max) if raw_max else DEFAULT_MAX_BODY_BYTES
        except ValueError:
            max_body_bytes = 0
        if max_body_bytes < 1:
            raise ConfigurationError(
                f"REFLUXO_MAX_BODY_BYTES must be a positive integer, got {raw_max!r}"
            )
        settings = cls(
            app=app,
            project=project,
            location=location,
            queue=queue,
            function_url=function_url,
            collection=env.get("REFLUXO_COLLECTION") or "refluxo_runs",
            service_account=env.get("REFLUXO_SERVICE_ACCOUNT") or None,
            trust_platform_auth=env.get("REFLUXO_TRUST_PLATFORM_AUTH", "") in ("1", "true"),
            dispatch_token=env.get("REFLUXO_DISPATCH_TOKEN") or None,
            api_token=env.get("REFLUXO_API_TOKEN") or None,
            globals=globals_,
            max_body_bytes=max_body_bytes,
            tasks_emulator_host=env.get("CLOUD_TASKS_EMULATOR_HOST") or None,
        )
        if settings.service_account is None and settings.dispatch_token is None:
            raise ConfigurationError(
                "set REFLUXO_SERVICE_ACCOUNT (OIDC, in production) or REFLUXO_DISPATCH_TOKEN: "
                "/_dispatch must be authenticated"
            )
        return settings


def load_app(spec: str) -> list[Workflow]:
    """The workflows ``REFLUXO_APP`` names (see ``refluxo.core.dispatcher.load_workflows``)."""
    try:
        return load_workflows(spec)
    except DefinitionError as exc:
        raise ConfigurationError(f"REFLUXO_APP: {exc}") from exc


def bootstrap(settings: GcpSettings, workflows: list[Workflow] | None = None) -> HttpApi:
    """Build the Firestore store, the Cloud Tasks scheduler, the dispatcher and the HTTP API.

    Call it inside the event loop that will serve requests: the gRPC clients bind to it.
    """
    from google.cloud import firestore, tasks_v2

    from .scheduler import CloudTasksScheduler
    from .store import FirestoreStateStore

    db = firestore.AsyncClient(project=settings.project)
    if settings.tasks_emulator_host:
        import grpc
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcAsyncIOTransport,
        )

        channel = grpc.aio.insecure_channel(settings.tasks_emulator_host)
        tasks = tasks_v2.CloudTasksAsyncClient(
            transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
        )
    else:
        tasks = tasks_v2.CloudTasksAsyncClient()
    headers = {}
    if settings.dispatch_token and not settings.service_account:
        headers[DISPATCH_TOKEN_HEADER] = settings.dispatch_token
    scheduler = CloudTasksScheduler(
        tasks,
        queue=settings.queue_path,
        url=settings.dispatch_url,
        service_account=settings.service_account,
        audience=settings.function_url if settings.service_account else None,
        headers=headers or None,
    )
    store = FirestoreStateStore(db, collection=settings.collection)
    dispatcher = RunService(
        workflows if workflows is not None else load_app(settings.app),
        store,
        scheduler,
        globals=settings.globals,
    )
    auth: Authenticator
    if settings.service_account:
        auth = OidcVerifier(
            settings.function_url,
            settings.service_account,
            trust_platform_verification=settings.trust_platform_auth,
        )
    else:
        assert settings.dispatch_token is not None
        auth = shared_secret(settings.dispatch_token)
    return HttpApi(
        dispatcher,
        api_token=settings.api_token,
        dispatch_auth=auth,
        max_body_bytes=settings.max_body_bytes,
    )
