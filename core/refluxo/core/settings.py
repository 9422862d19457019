"""What every platform's composition root shares: settings, the hosted app, the API.

A root (``refluxo.gcp.bootstrap``, the Worker's ``RefluxoWorker.from_env``, the embedded
``LocalRuntime``) reads its settings with :meth:`Settings.from_env` (a platform subclass adds
its own variables), loads the workflows with :func:`load_app`, builds its clients or bindings
(or takes the ones a test hands in), and gets the HTTP API from :func:`build_api`.

Variables every platform reads (``REFLUXO_`` prefix):

===========================  ============================================================
``REFLUXO_APP``              the workflows, ``module`` or ``module:attribute`` (required)
``REFLUXO_API_TOKEN``        when set, the public routes require this bearer token
``REFLUXO_PUBLIC_API``       ``1``: a platform that refuses the public routes without a token
                             (Cloudflare) serves them to anyone
``REFLUXO_GLOBALS``          JSON value passed to executors as ``globals`` (secrets)
``REFLUXO_MAX_BODY_BYTES``   request body limit (default 262144, at most 100 MiB)
``REFLUXO_LOG_LEVEL``        ``DEBUG``, ``INFO`` (default), ``WARNING``, ``ERROR``
``REFLUXO_DELIVERY_BUDGET_MS`` how long one delivery may run consecutive steps of an active
                             run (default 1000, ``0``: one step per delivery, at most 60000)
===========================  ============================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict

from .dispatcher import DEFAULT_DELIVERY_BUDGET_MS, RunService, Workflow, load_workflows
from .errors import DefinitionError
from .http import DEFAULT_MAX_BODY_BYTES, Authenticator, HttpApi
from .ports import Scheduler, StateStore

__all__ = ["ConfigurationError", "Environment", "Settings", "build_api", "load_app"]

MAX_BODY_BYTES_CEILING = 100 * 1024 * 1024

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ConfigurationError(ValueError):
    """A setting, binding or client is missing or malformed; the message names it."""


class Environment:
    """Reads variables from a mapping (``os.environ``) or an object's attributes (a Worker's
    ``env``), collecting the required ones that are missing so they are named all at once.

    Args:
        source: a mapping of names to values, or an object with the variables as attributes.
    """

    def __init__(self, source: Any) -> None:
        self._source = source
        self.missing: list[str] = []

    def text(self, name: str) -> str | None:
        """The value of ``name``; None when unset or empty.

        Raises:
            ConfigurationError: the value is not text (a binding where a var was expected).
        """
        if isinstance(self._source, Mapping):
            value = self._source.get(name)
        else:
            value = getattr(self._source, name, None)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a plain-text var or secret")
        return value

    def required(self, name: str, *, fallback: str | None = None, hint: str = "") -> str:
        """The value of ``name`` (or of ``fallback``); when neither is set, remembered as
        missing (see :meth:`check`) and "" returned."""
        value = self.text(name) or (self.text(fallback) if fallback else None)
        if value is None:
            label = f"{name} (or {fallback})" if fallback else name
            self.missing.append(f"{label} ({hint})" if hint else label)
            return ""
        return value

    def number(self, name: str, default: int, low: int, high: int) -> int:
        """The integer value of ``name`` between ``low`` and ``high``; ``default`` when unset.

        Raises:
            ConfigurationError: naming the variable, when not an integer or out of range.
        """
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigurationError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def flag(self, name: str) -> bool:
        """True when ``name`` is ``1`` or ``true``."""
        return (self.text(name) or "").lower() in ("1", "true")

    def json(self, name: str) -> Any:
        """The JSON value of ``name``; None when unset.

        Raises:
            ConfigurationError: naming the variable, when not valid JSON.
        """
        raw = self.text(name)
        try:
            return json.loads(raw) if raw else None
        except ValueError as exc:
            raise ConfigurationError(f"{name} is not valid JSON: {exc}") from None

    def check(self) -> None:
        """Raise if a required variable was missing.

        Raises:
            ConfigurationError: naming every missing variable.
        """
        if self.missing:
            raise ConfigurationError(f"not set: {', '.join(self.missing)}")


MAX_DELIVERY_BUDGET_MS = 60_000
"""The most ``REFLUXO_DELIVERY_BUDGET_MS`` may say: well below every platform's request limit."""


class Settings(BaseModel):
    """The settings every platform reads; a platform subclass adds its own.

    Build one directly (tests, the embedded runtime) or with :meth:`from_env`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    app: str = ""
    api_token: str | None = None
    public_api: bool = False
    globals: Any = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: LogLevel = "INFO"
    delivery_budget_ms: int = DEFAULT_DELIVERY_BUDGET_MS

    @classmethod
    def from_env(cls, env: Any = None) -> Self:
        """The settings from ``env`` (a mapping or a Worker's ``env``; default ``os.environ``).

        Raises:
            ConfigurationError: naming every required variable that is missing or empty, or
                the variable whose value is malformed.
        """
        source = Environment(os.environ if env is None else env)
        values = cls.read_env(source)
        source.check()
        settings = cls(**values)
        settings.check()
        return settings

    @classmethod
    def read_env(cls, env: Environment) -> dict[str, Any]:
        """The fields' values read from ``env``; a subclass adds its own to these."""
        level = (env.text("REFLUXO_LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigurationError(f"REFLUXO_LOG_LEVEL {level!r} is not a log level")
        return {
            "app": env.required("REFLUXO_APP", hint="the workflows' module"),
            "api_token": env.text("REFLUXO_API_TOKEN"),
            "public_api": env.flag("REFLUXO_PUBLIC_API"),
            "globals": env.json("REFLUXO_GLOBALS"),
            "max_body_bytes": env.number(
                "REFLUXO_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1, MAX_BODY_BYTES_CEILING
            ),
            "log_level": level,
            "delivery_budget_ms": env.number(
                "REFLUXO_DELIVERY_BUDGET_MS", DEFAULT_DELIVERY_BUDGET_MS, 0, MAX_DELIVERY_BUDGET_MS
            ),
        }

    def check(self) -> None:
        """Rules across fields, once they are read; a subclass adds its own.

        Raises:
            ConfigurationError: saying which settings do not go together.
        """


def load_app(spec: str) -> list[Workflow]:
    """The workflows ``REFLUXO_APP`` names (see :func:`refluxo.core.dispatcher.load_workflows`).

    Raises:
        ConfigurationError: the module cannot be imported or names no workflows.
    """
    try:
        return load_workflows(spec)
    except DefinitionError as exc:
        raise ConfigurationError(f"REFLUXO_APP: {exc}") from exc


def build_api(
    workflows: Iterable[Workflow],
    store: StateStore,
    scheduler: Scheduler,
    settings: Settings,
    *,
    dispatch_auth: Authenticator | None = None,
    dispatcher: Callable[..., RunService] = RunService,
    **options: Any,
) -> HttpApi:
    """The dispatcher over ``store`` and ``scheduler``, and the HTTP API over it.

    Args:
        workflows: the workflows to host.
        store: the state store.
        scheduler: the scheduler.
        settings: the globals, the API token, the body limit and the delivery budget.
        dispatch_auth: how ``/_dispatch`` authenticates the scheduler (None: refused).
        dispatcher: the dispatcher class (a runtime may extend it).
        options: further arguments of the dispatcher (its clock...).

    Raises:
        ValueError: the workflows need what ``store`` lacks (an archive).
    """
    options.setdefault("delivery_budget_ms", settings.delivery_budget_ms)
    service = dispatcher(list(workflows), store, scheduler, globals=settings.globals, **options)
    return HttpApi(
        service,
        api_token=settings.api_token,
        dispatch_auth=dispatch_auth,
        max_body_bytes=settings.max_body_bytes,
    )
