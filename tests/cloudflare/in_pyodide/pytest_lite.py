"""Runs pytest-style tests inside Pyodide, where ``pytest.main`` cannot await the bindings.

Under Node 20 Pyodide has no JSPI, so pytest's synchronous runner cannot wait for a KV, D1 or
Queues call. This module runs the same tests on the running event loop instead. It supports
what this project's tests use, and refuses the rest loudly:

* test functions of a module and ``test_*`` methods of ``Test*`` classes (mixins included),
  sync or async;
* ``@pytest.mark.parametrize`` (stacked, ``pytest.param``), ``skip`` and ``skipif`` marks;
* fixtures by parameter name: the class's, the modules' given as ``fixture_modules``
  (``conftest``), and ``request`` (``getfixturevalue``), ``caplog``; sync, async, generator
  and async-generator fixtures with teardown; function scope only;
* ``pytest.skip`` / ``pytest.fail`` / ``pytest.raises`` work as in pytest.

It prints ``PASSED|FAILED|SKIPPED <id>`` per test and a closing ``N passed, M failed, K
skipped`` line, which the host-side tests parse.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet

_SKIPPED = pytest.skip.Exception
_FAILED = pytest.fail.Exception


class _LogCapture(logging.Handler):
    """A small ``caplog``: ``records``, ``messages``, ``text``, ``at_level``, ``clear``."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    @property
    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)

    def clear(self) -> None:
        self.records.clear()

    @contextmanager
    def at_level(self, level: int | str, logger: str | None = None) -> Iterator[None]:
        target = logging.getLogger(logger)
        before = target.level
        target.setLevel(level)
        try:
            yield
        finally:
            target.setLevel(before)


def module_of(namespace: dict[str, Any]) -> ModuleType:
    """A module over a namespace (a ``run`` mode program's ``globals()``), for ``run_module``."""
    module = ModuleType(namespace.get("__name__", "__main__"))
    module.__dict__.update(namespace)
    return module


def _prefixed(module: ModuleType, name: str) -> str:
    """``test_engine::name`` for a module's test; a program's own tests keep their name."""
    short = module.__name__.rsplit(".", 1)[-1]
    return name if short == "__main__" else f"{short}::{name}"


def _is_fixture(obj: Any) -> bool:
    return hasattr(obj, "_get_wrapped_function") and hasattr(obj, "_fixture_function_marker")


class _Request:
    """What a fixture or test sees as ``request``."""

    def __init__(self, resolver: _Resolver) -> None:
        self._resolver = resolver

    def getfixturevalue(self, name: str) -> Any:
        return self._resolver.resolve_sync(name)


class _Resolver:
    """Resolves the fixtures of one test call, and tears them down afterwards."""

    def __init__(self, owner: Any, modules: Iterable[ModuleType], params: dict[str, Any]) -> None:
        self.owner = owner
        self.modules = list(modules)
        self.values: dict[str, Any] = dict(params)
        self.teardowns: list[Callable[[], Any]] = []

    def _definition(self, name: str) -> Callable[..., Any]:
        candidates = [getattr(self.owner, name, None)] if self.owner is not None else []
        candidates += [getattr(m, name, None) for m in self.modules]
        for candidate in candidates:
            if _is_fixture(candidate):
                marker = candidate._fixture_function_marker
                if marker.params is not None:
                    raise NotImplementedError(f"fixture {name!r}: parametrized fixtures")
                fn: Callable[..., Any] = candidate._get_wrapped_function()
                return fn
        raise LookupError(f"fixture {name!r} not found")

    def _builtin(self, name: str) -> bool:
        if name == "request":
            self.values[name] = _Request(self)
        elif name == "caplog":
            handler = _LogCapture()
            root = logging.getLogger()
            root.addHandler(handler)
            self.teardowns.append(lambda: root.removeHandler(handler))
            self.values[name] = handler
        else:
            return False
        return True

    async def resolve(self, name: str) -> Any:
        if name in self.values or self._builtin(name):
            return self.values[name]
        fn = self._definition(name)
        kwargs = {p: await self.resolve(p) for p in _arg_names(fn)}
        self.values[name] = await self._call(fn, kwargs)
        return self.values[name]

    def resolve_sync(self, name: str) -> Any:
        if name in self.values or self._builtin(name):
            return self.values[name]
        fn = self._definition(name)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise NotImplementedError(f"getfixturevalue({name!r}) of an async fixture")
        kwargs = {p: self.resolve_sync(p) for p in _arg_names(fn)}
        result = fn(**kwargs)
        if inspect.isgenerator(result):
            generator = result
            result = next(generator)
            self.teardowns.append(lambda: next(generator, None))
        self.values[name] = result
        return result

    async def _call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if inspect.isasyncgenfunction(fn):
            agen = fn(**kwargs)
            value = await agen.__anext__()

            async def close() -> None:
                async for _ in agen:
                    pass

            self.teardowns.append(close)
            return value
        result = fn(**kwargs)
        if inspect.isgenerator(result):
            generator = result
            value = next(generator)
            self.teardowns.append(lambda: next(generator, None))
            return value
        if inspect.isawaitable(result):
            return await result
        return result

    async def teardown(self) -> None:
        for fn in reversed(self.teardowns):
            result = fn()
            if inspect.isawaitable(result):
                await result


def _arg_names(fn: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _marks(fn: Any) -> list[Any]:
    return list(getattr(fn, "pytestmark", []))


def _id_part(value: Any, argname: str, index: int) -> str:
    if value is None or isinstance(value, bool | int | float | str):
        return str(value)
    return f"{argname}{index}"


def _param_sets(fn: Any) -> list[tuple[str, dict[str, Any], list[Any]]]:
    """(id, {argname: value}, marks) for every parametrization of ``fn``."""
    axes: list[list[tuple[str, dict[str, Any], list[Any]]]] = []
    for mark in _marks(fn):
        if mark.name != "parametrize":
            continue
        argnames, argvalues = mark.args[0], mark.args[1]
        names = (
            [n.strip() for n in argnames.split(",") if n.strip()]
            if isinstance(argnames, str)
            else list(argnames)
        )
        ids = mark.kwargs.get("ids")
        axis = []
        for index, raw in enumerate(argvalues):
            marks: list[Any] = []
            given_id = None
            if isinstance(raw, ParameterSet):
                values, marks, given_id = list(raw.values), list(raw.marks), raw.id
            else:
                values = [raw] if len(names) == 1 else list(raw)
            if ids is not None and not callable(ids) and given_id is None:
                given_id = ids[index]
            case_id = given_id or "-".join(
                _id_part(v, n, index) for n, v in zip(names, values, strict=True)
            )
            axis.append((case_id, dict(zip(names, values, strict=True)), marks))
        axes.append(axis)
    if not axes:
        return [("", {}, [])]
    cases = []
    # pytest lists the decorator nearest the function first in pytestmark, and ids follow
    # the order the decorators are applied in.
    for combo in itertools.product(*axes):
        case_id = "-".join(c[0] for c in combo)
        params: dict[str, Any] = {}
        marks = []
        for _, p, m in combo:
            params.update(p)
            marks += m
        cases.append((case_id, params, marks))
    return cases


def _skip_reason(marks: Iterable[Any]) -> str | None:
    for mark in marks:
        if mark.name == "skip":
            return str(mark.kwargs.get("reason", mark.args[0] if mark.args else "skipped"))
        if mark.name == "skipif" and (mark.args[0] if mark.args else True):
            return str(mark.kwargs.get("reason", "skipif"))
    return None


class Runner:
    """Collects and runs tests; see the module docstring.

    Args:
        fixture_modules: modules whose fixtures every test may use (e.g. ``tests.conftest``).
        select: when given, run only the tests whose id contains one of these strings.
    """

    def __init__(
        self, fixture_modules: Iterable[ModuleType] = (), select: Iterable[str] | None = None
    ) -> None:
        self.fixture_modules = list(fixture_modules)
        self.select = list(select) if select is not None else None
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.skipped: list[str] = []

    async def run_module(
        self,
        module: ModuleType,
        *,
        id_prefix: str | None = None,
        fixtures: Iterable[ModuleType] = (),
    ) -> None:
        """Run the module's test functions and ``Test*`` classes, in definition order.

        A ``run`` mode program passes itself as ``module_of(globals())``. ``fixtures`` are
        modules whose fixtures come first (one module's tests run again on another store);
        ``id_prefix`` then tells the runs apart (``d1:test_dispatcher::name``).
        """
        first = list(fixtures)
        for name, obj in list(vars(module).items()):
            if name.startswith("test_") and inspect.isfunction(obj):
                if obj.__module__ == module.__name__:
                    test_id = _prefixed(module, name)
                    if id_prefix:
                        test_id = f"{id_prefix}:{test_id}"
                    await self._run(obj, None, test_id, [*first, module])
            elif name.startswith("Test") and inspect.isclass(obj):
                await self.run_class(obj, modules=[module], prefix=_prefixed(module, ""))

    async def run_class(
        self, cls: type, *, modules: Iterable[ModuleType] = (), prefix: str = ""
    ) -> None:
        """Run every ``test_*`` method of ``cls`` (inherited ones included) on fresh instances."""
        seen: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, obj in vars(klass).items():
                if name.startswith("test_") and callable(obj):
                    seen.pop(name, None)
                    seen[name] = obj
        for name in seen:
            await self._run(None, cls, f"{prefix}{cls.__name__}::{name}", list(modules))

    async def _run(
        self, fn: Any, cls: type | None, base_id: str, modules: list[ModuleType]
    ) -> None:
        target = fn if cls is None else getattr(cls, base_id.rsplit("::", 1)[1])
        for case_id, params, case_marks in _param_sets(target):
            test_id = f"{base_id}[{case_id}]" if case_id else base_id
            if self.select is not None and not any(s in test_id for s in self.select):
                continue
            await self._run_case(target, cls, test_id, params, case_marks, modules)

    async def _run_case(
        self,
        target: Any,
        cls: type | None,
        test_id: str,
        params: dict[str, Any],
        case_marks: list[Any],
        modules: list[ModuleType],
    ) -> None:
        started = time.monotonic()
        reason = _skip_reason([*_marks(target), *case_marks])
        if reason is not None:
            self._report("SKIPPED", test_id, started, reason)
            return
        owner = cls() if cls is not None else None
        call = getattr(owner, target.__name__) if owner is not None else target
        resolver = _Resolver(owner, [*modules, *self.fixture_modules], params)
        outcome, detail = "PASSED", ""
        try:
            kwargs = {p: await resolver.resolve(p) for p in _arg_names(call)}
            result = call(**kwargs)
            if inspect.isawaitable(result):
                await result
        except _SKIPPED as exc:
            outcome, detail = "SKIPPED", str(exc.msg if hasattr(exc, "msg") else exc)
        except (Exception, _FAILED) as exc:
            outcome, detail = "FAILED", "".join(traceback.format_exception(exc))
        try:
            await resolver.teardown()
        except Exception as exc:
            if outcome != "FAILED":
                outcome, detail = "FAILED", "teardown: " + "".join(traceback.format_exception(exc))
        self._report(outcome, test_id, started, detail)

    def _report(self, outcome: str, test_id: str, started: float, detail: str) -> None:
        {"PASSED": self.passed, "FAILED": self.failed, "SKIPPED": self.skipped}[outcome].append(
            test_id
        )
        elapsed = time.monotonic() - started
        if outcome == "SKIPPED":
            print(f"SKIPPED {test_id} ({elapsed:.2f}s): {detail}")
        else:
            print(f"{outcome} {test_id} ({elapsed:.2f}s)")
            if detail:
                print(detail, end="" if detail.endswith("\n") else "\n")

    def summary(self) -> int:
        """Print the closing line; returns the exit status (1 when a test failed)."""
        print(f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped")
        return 1 if self.failed or not (self.passed or self.skipped) else 0
