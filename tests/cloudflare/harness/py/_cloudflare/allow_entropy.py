"""Top-level entropy control, as workerd's ``allow_entropy``: a counter of allowed calls.

The counter lives in JavaScript (``_refluxo_entropy``, set up by the harness's python.mjs),
where ``crypto.getRandomValues`` (what the C library's ``getentropy`` calls in Pyodide)
consumes it, so calls made from C or Rust count as they do in workerd.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import _refluxo_entropy

TOP_LEVEL_ENTROPY_ERROR = (
    "Randomness is not allowed while a Worker is starting because startup "
    "values will be repeated across Worker instances, making them predictable. "
    "If this error occurs from importing a package, import the package from a "
    "function to load it after the Worker starts."
)


def in_request_context() -> bool:
    return not _refluxo_entropy.guarded()


def is_bad_entropy_enabled() -> bool:
    return bool(_refluxo_entropy.remaining() > 0)


def should_allow_entropy_call() -> bool:
    return in_request_context() or is_bad_entropy_enabled()


def raise_unless_entropy_allowed() -> None:
    if not should_allow_entropy_call():
        eio = 29
        raise OSError(eio, TOP_LEVEL_ENTROPY_ERROR)


@contextmanager
def allow_bad_entropy_calls(n: int) -> Iterator[None]:
    """Allow at most ``n`` calls inside the block.

    workerd also fails when fewer than ``n`` calls were made; not here: Node's Pyodide
    seeds some Rust hash maps once per process where workerd's does it per use (pydantic-core
    makes one call where the SDK's patch allows two), so only calls beyond ``n`` fail.
    """
    old = _refluxo_entropy.remaining()
    _refluxo_entropy.allow(n)
    try:
        yield
    finally:
        _refluxo_entropy.allow(old)
