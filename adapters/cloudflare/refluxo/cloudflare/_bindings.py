"""The shapes of the Workers bindings the adapters call, as Python sees them.

A Python Worker gets its bindings from ``self.env`` wrapped by workers-runtime-sdk: keyword
arguments become the JavaScript options object (``kv.put(key, value, metadata={...})`` is
``kv.put(key, value, {metadata: {...}})``), results come back as Python values (a JS object as
a dict with attribute access, ``null`` as None). These protocols name only what the adapters
use; tests may pass any object with these methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol


class KVNamespace(Protocol):
    """A Workers KV namespace binding (``[[kv_namespaces]]``)."""

    def get(self, key: str, /, **options: Any) -> Awaitable[Any]: ...

    def getWithMetadata(self, key: str, /, **options: Any) -> Awaitable[Any]: ...

    def put(self, key: str, value: str, /, **options: Any) -> Awaitable[Any]: ...

    def list(self, /, **options: Any) -> Awaitable[Any]: ...


class D1PreparedStatement(Protocol):
    """A D1 statement from ``prepare``; ``bind`` returns a bound copy."""

    def bind(self, *values: Any) -> D1PreparedStatement: ...

    def first(self) -> Awaitable[Any]: ...

    def all(self) -> Awaitable[Any]: ...

    def run(self) -> Awaitable[Any]: ...


class D1Database(Protocol):
    """A D1 database binding (``[[d1_databases]]``)."""

    def prepare(self, query: str, /) -> D1PreparedStatement: ...

    def batch(self, statements: Sequence[D1PreparedStatement], /) -> Awaitable[Any]: ...


class Queue(Protocol):
    """A Queues producer binding (``[[queues.producers]]``)."""

    def send(self, body: Any, /, **options: Any) -> Awaitable[Any]: ...
