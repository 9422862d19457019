"""The HTTP Cloud Function: functions-framework's (Flask) request in, the shared API's answer out.

functions-framework serves a synchronous function from several threads. The async API and its
gRPC clients live on one event loop in a background thread, started with the first request;
each request is handed to that loop and its thread waits for the answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from refluxo.core.http import HttpApi, HttpRequest, LimitedBody
from refluxo.core.logs import configure_logging

from .bootstrap import GcpSettings, bootstrap

logger = logging.getLogger("refluxo.gcp")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="refluxo-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()


class FunctionApp:
    """The Cloud Function's handler; built from the environment on its first request.

    Bodies over the API's ``max_body_bytes`` are refused with 413 before they are read (by
    their Content-Length) or as soon as the limit is passed (chunked bodies).

    Args:
        settings: the configuration; read from the environment when None.
        injected: passed to :func:`~refluxo.gcp.bootstrap.bootstrap` (``workflows``, the
            clients, or a ``store`` and ``scheduler`` of a test's own).
    """

    def __init__(self, settings: GcpSettings | None = None, **injected: Any) -> None:
        self._settings = settings
        self._injected = injected
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._api: HttpApi | None = None

    def _ready(self) -> tuple[_LoopThread, HttpApi]:
        with self._lock:
            if self._loop is None:
                configure_logging("json")
                self._loop = _LoopThread()
            if self._api is None:
                # A failure here (bad settings) fails this request; the next one tries again,
                # on the same loop thread.
                settings = self._settings or GcpSettings.from_env()
                configure_logging("json", getattr(logging, settings.log_level))

                async def build() -> HttpApi:
                    return bootstrap(settings, **self._injected)

                self._api = self._loop.run(build())
            return self._loop, self._api

    def __call__(self, request: Any) -> tuple[bytes, int, dict[str, str]]:
        """Answer a Flask request (what functions-framework passes)."""
        loop, api = self._ready()
        body = LimitedBody(api.max_body_bytes, request.content_length)
        refused = body.refusal()
        if refused is None:
            if body.declared is None:
                # No Content-Length (a chunked body): read no more than one byte past the limit.
                while body.wanted > 0:
                    chunk = request.stream.read(body.wanted)
                    if not chunk or not body.add(chunk):
                        break
                refused = body.refusal()
            else:
                body.add(request.get_data(cache=False))
        if refused is not None:
            return refused.body, refused.status, dict(refused.headers)
        req = HttpRequest(
            method=request.method,
            path=request.full_path,
            body=body.bytes(),
            headers=dict(request.headers.items()),
        )
        response = loop.run(api.handle(req))
        return response.body, response.status, dict(response.headers)


def create_handler(settings: GcpSettings | None = None, **injected: Any) -> Callable[[Any], Any]:
    """The function functions-framework calls: ``refluxo = create_handler()`` in ``main.py``.

    ``injected`` goes to :func:`~refluxo.gcp.bootstrap.bootstrap`.
    """
    return FunctionApp(settings, **injected)
