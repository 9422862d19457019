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
``REFLUXO_MAX_BODY_BYTES``   request body limit (default 262144, at most 100 MiB)
``REFLUXO_LOG_LEVEL``        ``DEBUG``, ``INFO`` (default), ``WARNING``, ``ERROR``
===========================  ============================================================

The variables every platform shares are read by :class:`refluxo.core.settings.Settings`.
The emulators are used when their usual variables are set: ``FIRESTORE_EMULATOR_HOST`` (read by
the Firestore client itself) and ``CLOUD_TASKS_EMULATOR_HOST``.
"""

from __future__ import annotations

from typing import Any

from refluxo.core import Workflow
from refluxo.core.http import HttpApi
from refluxo.core.ports import Scheduler, StateStore
from refluxo.core.settings import (
    ConfigurationError,
    Environment,
    Settings,
    build_api,
    load_app,
)

from .auth import DISPATCH_TOKEN_HEADER, OidcVerifier, shared_secret

__all__ = ["ConfigurationError", "GcpSettings", "bootstrap", "load_app"]


class GcpSettings(Settings):
    """Everything the Google Cloud runtime needs; see the module docstring for the variables."""

    project: str
    location: str
    queue: str
    function_url: str
    collection: str = "refluxo_runs"
    service_account: str | None = None
    trust_platform_auth: bool = False
    dispatch_token: str | None = None
    tasks_emulator_host: str | None = None

    @property
    def queue_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/queues/{self.queue}"

    @property
    def dispatch_url(self) -> str:
        return self.function_url.rstrip("/") + "/_dispatch"

    @classmethod
    def read_env(cls, env: Environment) -> dict[str, Any]:
        """The shared settings, then Cloud Tasks', Firestore's and ``/_dispatch``'s."""
        return {
            **super().read_env(env),
            "project": env.required("REFLUXO_PROJECT", fallback="GOOGLE_CLOUD_PROJECT"),
            "location": env.required("REFLUXO_LOCATION"),
            "queue": env.required("REFLUXO_QUEUE"),
            "function_url": env.required("REFLUXO_FUNCTION_URL"),
            "collection": env.text("REFLUXO_COLLECTION") or "refluxo_runs",
            "service_account": env.text("REFLUXO_SERVICE_ACCOUNT"),
            "trust_platform_auth": env.flag("REFLUXO_TRUST_PLATFORM_AUTH"),
            "dispatch_token": env.text("REFLUXO_DISPATCH_TOKEN"),
            "tasks_emulator_host": env.text("CLOUD_TASKS_EMULATOR_HOST"),
        }

    def check(self) -> None:
        """Raises ConfigurationError when neither ``REFLUXO_SERVICE_ACCOUNT`` nor
        ``REFLUXO_DISPATCH_TOKEN`` is set."""
        if self.service_account is None and self.dispatch_token is None:
            raise ConfigurationError(
                "set REFLUXO_SERVICE_ACCOUNT (OIDC, in production) or REFLUXO_DISPATCH_TOKEN: "
                "/_dispatch must be authenticated"
            )


def bootstrap(
    settings: GcpSettings,
    workflows: list[Workflow] | None = None,
    *,
    firestore_client: Any = None,
    tasks_client: Any = None,
    store: StateStore | None = None,
    scheduler: Scheduler | None = None,
) -> HttpApi:
    """Build the Firestore store, the Cloud Tasks scheduler, the dispatcher and the HTTP API.

    Call it inside the event loop that will serve requests: the gRPC clients bind to it.

    Args:
        settings: the configuration.
        workflows: the workflows to host, instead of loading ``REFLUXO_APP``.
        firestore_client: a ``firestore.AsyncClient`` to use instead of building one.
        tasks_client: a ``tasks_v2.CloudTasksAsyncClient`` to use instead of building one.
        store: a state store to use instead of Firestore.
        scheduler: a scheduler to use instead of Cloud Tasks.
    """
    if store is None:
        from .store import FirestoreStateStore

        if firestore_client is None:
            from google.cloud import firestore

            firestore_client = firestore.AsyncClient(project=settings.project)
        store = FirestoreStateStore(firestore_client, collection=settings.collection)
    if scheduler is None:
        from .scheduler import CloudTasksScheduler

        headers = {}
        if settings.dispatch_token and not settings.service_account:
            headers[DISPATCH_TOKEN_HEADER] = settings.dispatch_token
        scheduler = CloudTasksScheduler(
            tasks_client if tasks_client is not None else _tasks_client(settings),
            queue=settings.queue_path,
            url=settings.dispatch_url,
            service_account=settings.service_account,
            audience=settings.function_url if settings.service_account else None,
            headers=headers or None,
        )
    if settings.service_account:
        auth = OidcVerifier(
            settings.function_url,
            settings.service_account,
            trust_platform_verification=settings.trust_platform_auth,
        )
    else:
        assert settings.dispatch_token is not None
        auth = shared_secret(settings.dispatch_token)
    hosted = workflows if workflows is not None else load_app(settings.app)
    return build_api(hosted, store, scheduler, settings, dispatch_auth=auth)


def _tasks_client(settings: GcpSettings) -> Any:
    from google.cloud import tasks_v2

    if not settings.tasks_emulator_host:
        return tasks_v2.CloudTasksAsyncClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
        CloudTasksGrpcAsyncIOTransport,
    )

    channel = grpc.aio.insecure_channel(settings.tasks_emulator_host)
    return tasks_v2.CloudTasksAsyncClient(transport=CloudTasksGrpcAsyncIOTransport(channel=channel))
