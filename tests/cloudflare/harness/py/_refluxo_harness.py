"""Python half of the refluxo Cloudflare test harness (runs inside Pyodide).

It plays the part of workerd's Python entrypoint (``python-entrypoint-helper.ts``
and ``introspection.py``): the Worker class is called as ``cls(ctx, env)`` once per
invocation, so workers-runtime-sdk's ``WorkerEntrypoint`` wraps ``env`` in its
``_EnvWrapper``; a handler is called through the same conversion as production
(``python_from_rpc`` on the arguments, ``relaxed_call`` for ``fetch`` only,
``python_to_rpc`` on the result): ``queue(batch, env, ctx)`` and
``scheduled(controller, env, ctx)`` are called strictly with their three
JavaScript arguments (the SDK wraps the batch in its ``_BindingWrapper``).

It also builds the ``harness_env`` module that ``run`` mode programs import.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import json
import linecache
import os
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from inspect import isawaitable
from typing import Any

from pyodide.code import relaxed_call
from workers import WorkerEntrypoint, python_from_rpc, python_to_rpc
from workers.rpc import _BindingWrapper, _EnvWrapper


def load_entry(module_name: str, class_name: str) -> tuple[type, str | None]:
    """Import the Worker's main module and return its entrypoint class.

    Production (workerd) runs the class named ``Default``; another name works
    here only when asked for explicitly, or when it is the module's single
    ``WorkerEntrypoint`` subclass, and then with a warning.
    """
    with worker_top_level():
        module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    warning = None
    if cls is None:
        found = [
            v
            for v in vars(module).values()
            if inspect.isclass(v)
            and issubclass(v, WorkerEntrypoint)
            and v is not WorkerEntrypoint
            and v.__module__ == module.__name__
        ]
        if len(found) != 1:
            names = ", ".join(c.__name__ for c in found) or "none"
            raise LookupError(
                f"{module_name} defines no class {class_name!r}; "
                f"WorkerEntrypoint subclasses found: {names}"
            )
        cls = found[0]
        warning = (
            f"{module_name} has no class {class_name!r}; using {cls.__name__}. "
            "workerd only runs a WorkerEntrypoint named 'Default' as the default export."
        )
    if not (inspect.isclass(cls) and issubclass(cls, WorkerEntrypoint)):
        raise TypeError(f"{module_name}.{class_name} is not a workers.WorkerEntrypoint subclass")
    return cls, warning


def process_pth_files() -> list[str]:
    """Run the ``.pth`` files of the installed wheels, as workerd does at start-up.

    ``loadPackage`` installs wheels without processing them; the Workers SDK loads its
    package and entropy patches through ``_workers_sdk_patch_loader.pth``. Returns the
    files processed.
    """
    import site
    import sysconfig

    site_packages = sysconfig.get_path("purelib")
    names = sorted(n for n in os.listdir(site_packages) if n.endswith(".pth"))
    site.addsitedir(site_packages)
    return names


@contextmanager
def worker_top_level() -> Iterator[None]:
    """Run the Worker's top level (its main module's import) under workerd's rules.

    Production snapshots memory after the top level, so entropy is refused there
    (workerd's ``entropy_patches.py``): ``os.urandom`` and an unseeded ``random.Random()``
    raise ``OSError(EIO)``, the ``random`` module's functions are blocked (``Random`` and
    ``SystemRandom`` may be created), and ``getentropy`` from C or Rust fails unless a
    registered import patch allows a counted call. Afterwards, as before the first
    request, everything is restored.
    """
    import random

    import _refluxo_entropy
    from _cloudflare import import_patch_manager as patches
    from _cloudflare.allow_entropy import raise_unless_entropy_allowed

    urandom, seed = os.urandom, random.Random.seed

    def guarded_urandom(size: int, /) -> bytes:
        raise_unless_entropy_allowed()
        return urandom(size)

    def guarded_seed(self: random.Random, a: Any = None, version: int = 2) -> None:
        if a is None:
            raise_unless_entropy_allowed()
        seed(self, a, version)

    _refluxo_entropy.guard(True)
    os.urandom = random._urandom = guarded_urandom  # type: ignore[attr-defined]
    random.Random.seed = guarded_seed  # type: ignore[method-assign]
    patches.block_calls(random, allowlist=("Random", "SystemRandom"))
    patches.install_import_patch_manager()
    try:
        yield
    finally:
        patches.remove_import_patch_manager()
        for handler in patches.after_snapshot_handlers:
            handler()
        _refluxo_entropy.guard(False)
        os.urandom = random._urandom = urandom  # type: ignore[attr-defined]
        random.Random.seed = seed  # type: ignore[method-assign]
        for handler in patches.before_first_request_handlers:
            handler()
        patches.before_first_request_handlers.clear()


def has_method(cls: type, name: str) -> bool:
    return callable(getattr(cls, name, None))


def new_instance(cls: type, ctx: Any, env: Any) -> Any:
    """``cls(ctx, env)``, as workerd's ``initPyInstance`` does per invocation."""
    return cls(ctx, env)


async def invoke(relaxed: bool, inst: Any, prop: str, *args: Any) -> Any:
    """Call ``inst.<prop>(*args)`` the way workerd's ``wrapper_func`` does."""
    method = getattr(inst, prop)
    py_args = [python_from_rpc(a) for a in args]
    result = relaxed_call(method, *py_args) if relaxed else method(*py_args)
    if isawaitable(result):
        result = await result
    return python_to_rpc(result)


async def call_queue_handler(fn: Callable[..., Any], batch: Any) -> None:
    """Hand a batch to a handler set with ``harness_env.set_queue_handler``."""
    result = fn(_BindingWrapper(batch))
    if isawaitable(result):
        await result


def _plain(value: Any) -> Any:
    """A JS object of JSON values as Python values (``null`` as ``None``)."""
    from js import JSON

    return json.loads(JSON.stringify(value))


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


async def run_program(source: str, path: str) -> int:
    """Run a ``run`` mode program as ``__main__``; top-level ``await`` allowed.

    Returns the exit status: 0, the ``SystemExit`` code, or 1 after printing the
    traceback of an uncaught exception to stderr.
    """
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    try:
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        code = compile(source, path, "exec", flags=flags, dont_inherit=True)
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:  # report everything, as `python FILE` does
        tb = exc.__traceback__
        # Drop this function's own frame from the report.
        traceback.print_exception(type(exc), exc, tb.tb_next if tb else None, file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


# --------------------------------------------------------------------------
# harness_env: what a `run` mode program sees
# --------------------------------------------------------------------------


def install_harness_env(api: Any) -> types.ModuleType:
    """Create the ``harness_env`` module from the JS side's ``api`` object."""
    mod = types.ModuleType(
        "harness_env",
        "Bindings of the refluxo Cloudflare harness (Miniflare KV / Queues / D1).",
    )
    mod.raw_env = api.env
    mod.env = _EnvWrapper(api.env)
    mod.ctx = api.ctx
    mod.binding_names = list(api.bindingNames.to_py())
    mod.entrypoint = None

    def set_queue_handler(fn: Callable[..., Any] | None) -> None:
        """Receive queue batches in this program (instead of the Worker entry).

        ``fn(batch)`` (sync or async) gets the batch wrapped exactly as a
        ``WorkerEntrypoint.queue`` handler does; ``message.ack()`` /
        ``message.retry(delaySeconds=N)`` behave as in production. Deliveries
        that arrive while no handler is set wait for one.
        """
        api.setQueueHandler(fn)

    async def dispatch_fetch(url: str, **init: Any) -> Any:
        """Send an HTTP request through Miniflare to the Worker entry's ``fetch``.

        ``init`` is a fetch() init (method=, headers=, body=). Returns a
        ``workers.Response``.
        """
        from workers import Response

        js_init = python_to_rpc(init) if init else None
        res = await api.dispatchFetch(url, js_init)
        return Response(res)

    async def deliver_batch(queue: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Hand a batch straight to the ``--entry`` Worker's ``queue``, as workerd calls it.

        ``messages`` are ``{"body": ..., "id"?, "attempts"?}``. Returns ``{"ops": [...],
        "error": None | str}``: the ack/retry calls made, and the handler's exception text.
        """
        return _plain(await api.deliverBatch(queue, python_to_rpc(messages)))

    async def trigger_scheduled(cron: str, scheduled_time: int | None = None) -> dict[str, Any]:
        """Fire a cron trigger through Miniflare: the ``--entry`` Worker's
        ``scheduled(controller, env, ctx)``.

        Returns ``{"error": None | str, "noRetry": bool, "cron": str, "scheduledTime": ms}``.
        """
        return _plain(await api.triggerScheduled(cron, scheduled_time))

    mod.deliver_batch = deliver_batch
    mod.trigger_scheduled = trigger_scheduled
    mod.set_queue_handler = set_queue_handler
    mod.dispatch_fetch = dispatch_fetch
    mod.run_tests = run_tests
    sys.modules["harness_env"] = mod
    return mod


async def run_tests(namespace: dict[str, Any] | None = None, *, prefix: str = "test_") -> int:
    """Run the ``test_*`` functions (sync or async, no arguments) of a namespace.

    For programs run with ``node harness.mjs run``: pytest itself cannot await
    the bindings inside Pyodide under Node 20 (no JSPI), so this is the runner.
    Prints one line per test and a closing ``N passed, M failed`` line; raises
    ``AssertionError`` when any failed, so the harness exits non-zero. Returns the
    number of tests run.
    """
    if namespace is None:
        namespace = sys._getframe(1).f_globals
    tests = [
        (name, fn)
        for name, fn in list(namespace.items())
        if name.startswith(prefix) and callable(fn) and not inspect.isclass(fn)
    ]
    passed = failed = 0
    failures = []
    for name, fn in tests:
        t0 = time.monotonic()
        try:
            result = fn()
            if isawaitable(result):
                await result
        except Exception as exc:
            failed += 1
            failures.append(name)
            print(f"FAILED {name} ({time.monotonic() - t0:.2f}s)")
            print(format_exception(exc), end="")
        else:
            passed += 1
            print(f"PASSED {name} ({time.monotonic() - t0:.2f}s)")
    print(f"{passed} passed, {failed} failed")
    if failed:
        raise AssertionError(f"{failed} test(s) failed: {', '.join(failures)}")
    return len(tests)
