"""Import-time patches, as workerd's ``import_patch_manager``: a meta path finder that runs a
module's registered context managers around its creation or execution while the Worker's top
level runs, and calls that stay blocked until the first request.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from .allow_entropy import TOP_LEVEL_ENTROPY_ERROR, in_request_context

Patch = Callable[[ModuleType], AbstractContextManager[Any]]

EXEC_PATCHES: dict[str, Patch] = {}
CREATE_PATCHES: dict[str, Patch] = {}
after_snapshot_handlers: list[Callable[[], None]] = []
before_first_request_handlers: list[Callable[[], None]] = []
APPLIED: list[str] = []
"""Names of the modules whose patches ran (for tests)."""


def register_exec_patch(name: str) -> Callable[[Patch], Patch]:
    def register(patch: Patch) -> Patch:
        EXEC_PATCHES[name] = patch
        return patch

    return register


def register_create_patch(name: str) -> Callable[[Patch], Patch]:
    def register(patch: Patch) -> Patch:
        CREATE_PATCHES[name] = patch
        return patch

    return register


def _on_module(name: str, handlers: list[Callable[[], None]]) -> Callable[..., Any]:
    def register(fn: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        def call() -> None:
            module = sys.modules.get(name)
            if module is not None:
                fn(module)

        handlers.append(call)
        return fn

    return register


def register_after_snapshot(name: str) -> Callable[..., Any]:
    return _on_module(name, after_snapshot_handlers)


def register_before_first_request(name: str) -> Callable[..., Any]:
    return _on_module(name, before_first_request_handlers)


def block_calls(module: ModuleType, *, allowlist: tuple[str, ...] = ()) -> None:
    """Make the module's public functions raise until the first request."""
    for name, value in list(vars(module).items()):
        if name.startswith("_") or name in allowlist or not callable(value):
            continue
        if isinstance(value, type) or isinstance(value, ModuleType):
            continue
        module.__dict__[name] = _blocked(value)

    def unblock() -> None:
        for name, value in list(vars(module).items()):
            original = getattr(value, "__refluxo_blocked__", None)
            if original is not None:
                module.__dict__[name] = original

    before_first_request_handlers.append(unblock)


def _blocked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def blocked(*args: Any, **kwargs: Any) -> Any:
        if not in_request_context():
            raise OSError(29, f"{TOP_LEVEL_ENTROPY_ERROR} ({fn.__qualname__} was called)")
        return fn(*args, **kwargs)

    blocked.__refluxo_blocked__ = fn  # type: ignore[attr-defined]
    blocked.__name__ = getattr(fn, "__name__", "blocked")
    return blocked


class _PatchingLoader(Loader):
    def __init__(self, inner: Loader, name: str) -> None:
        self.inner = inner
        self.name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        patch = CREATE_PATCHES.get(self.name)
        if patch is None:
            return self.inner.create_module(spec)
        APPLIED.append(self.name)
        with patch(ModuleType(self.name)):
            return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        patch = EXEC_PATCHES.get(self.name)
        if patch is None:
            self.inner.exec_module(module)
            return
        APPLIED.append(self.name)
        with patch(module):
            self.inner.exec_module(module)


class _PatchFinder(MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname not in EXEC_PATCHES and fullname not in CREATE_PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)  # type: ignore[attr-defined]
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec  # type: ignore[no-any-return]
        return None


_FINDER = _PatchFinder()


def install_import_patch_manager() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def remove_import_patch_manager() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


@contextmanager
def installed() -> Iterator[None]:
    install_import_patch_manager()
    try:
        yield
    finally:
        remove_import_patch_manager()
