"""The one JSON rule for every value that enters a run: strict, finite, and bounded in depth.

Run inputs, event payloads and executor outputs end up inside the run's snapshot, which must
always read back: one value that the snapshot codec cannot parse would make the run
unreadable. So every such value is checked (and converted to plain JSON types) on the way in,
by :func:`strict_json`:

* nested at most :data:`DEFAULT_MAX_DEPTH` arrays/objects deep (configurable per deployment
  through :class:`Limits`, never above :data:`MAX_DEPTH_CEILING`, which the snapshot codec
  reads back with room for the snapshot's own nesting);
* no NaN or Infinity (JavaScript and strict parsers cannot read those tokens);
* no lone surrogate in a string or key (not encodable as UTF-8);
* no cycle, and no type without a JSON form;
* no two keys of one object that become the same string (``{1: ..., "1": ...}``).

Values that break it raise :class:`NotStrictJson`, which names the rule and where it broke.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import NotStrictJson

DEFAULT_MAX_DEPTH = 64
"""How deep inputs, payloads and outputs may nest by default (arrays and objects)."""

MAX_DEPTH_CEILING = 128
"""The deepest :attr:`Limits.max_depth` may be: the snapshot codec's parser stops at 200
levels, and a value sits a few levels down inside a snapshot."""

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """What a deployment accepts into a run; over a limit, the request is refused with a 4xx.

    Attributes:
        max_depth: how deep a run's input, an event's payload or a step's output may nest.
        max_inbox_events: how many events may wait in a run's inbox, unconsumed.
        max_inbox_bytes: how many bytes of JSON the events waiting in the inbox may take.
        max_text_chars: the longest event name, event id or cancel reason.
    """

    max_depth: int = DEFAULT_MAX_DEPTH
    max_inbox_events: int = 100
    max_inbox_bytes: int = 256 * 1024
    max_text_chars: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH_CEILING:
            raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_CEILING}")
        if self.max_inbox_events < 1 or self.max_inbox_bytes < 1 or self.max_text_chars < 1:
            raise ValueError("inbox and text limits must be positive")


def check_text(text: str, what: str, limit: int) -> str:
    """Return ``text`` if it has no lone surrogate and at most ``limit`` characters."""
    if _SURROGATE.search(text):
        raise NotStrictJson(f"{what} holds a lone surrogate, which UTF-8 cannot encode", "unicode")
    if len(text) > limit:
        raise NotStrictJson(
            f"{what} is {len(text)} characters, over the limit of {limit} (max_text_chars)",
            "max_text_chars",
        )
    return text


def strict_json(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, what: str = "value") -> Any:
    """``value`` as plain JSON types (dict, list, str, int, float, bool, None), checked.

    Tuples become lists; pydantic models, dataclasses, datetimes and the other types pydantic
    serializes become their JSON form; non-string keys become strings as ``json.dumps`` makes
    them (``1`` -> ``"1"``, ``True`` -> ``"true"``).

    Raises:
        NotStrictJson: the value breaks the rule (see the module's docstring); ``rule`` says
            which: ``max_depth``, ``nan``, ``unicode``, ``cycle``, ``type`` or ``key_collision``.
    """
    # The fast path stops at the default depth, so a cycle ends it quickly (then the full
    # check finds the cycle, or the depth past it).
    plain = _plain(value, min(max_depth, DEFAULT_MAX_DEPTH))
    if plain is not _REFUSED:
        return plain
    return _convert(value, max_depth, what, 0, set())


_REFUSED = object()


def _plain(value: Any, levels: int) -> Any:
    """``value`` copied when it is made of dicts (string keys), lists and plain scalars only,
    every rule kept, within ``levels`` levels; else ``_REFUSED``, and :func:`_convert` (which
    handles every other type and says which rule broke where) takes over.

    The common case, checked without building a location for every value.
    """
    kind = type(value)
    if kind is str:
        return value if value.isascii() or not _SURROGATE.search(value) else _REFUSED
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else _REFUSED
    if levels <= 0:
        return _REFUSED
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or not _SURROGATE.search(key)):
                return _REFUSED
            kind = type(item)
            # Strings and integers inline: they are most of what outputs hold.
            if kind is str:
                if not (item.isascii() or not _SURROGATE.search(item)):
                    return _REFUSED
            elif kind is not int:
                item = _plain(item, levels - 1)
                if item is _REFUSED:
                    return _REFUSED
            out[key] = item
        return out
    if kind is list:
        items = []
        for item in value:
            item = _plain(item, levels - 1)
            if item is _REFUSED:
                return _REFUSED
            items.append(item)
        return items
    return _REFUSED


def _key(key: Any, where: str) -> str:
    if isinstance(key, str):
        if _SURROGATE.search(key):
            raise NotStrictJson(f"{where}: a key holds a lone surrogate", "unicode")
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        if not math.isfinite(key):
            raise NotStrictJson(f"{where}: a key is {key}, which JSON cannot hold", "nan")
        return repr(key)
    raise NotStrictJson(
        f"{where}: a key of type {type(key).__name__} has no JSON form (keys are strings)", "type"
    )


def _convert(value: Any, max_depth: int, where: str, depth: int, path: set[int]) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise NotStrictJson(
                f"{where}: a string holds a lone surrogate, which UTF-8 cannot encode", "unicode"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotStrictJson(
                f"{where}: {value} is not a JSON number (no NaN or Infinity)", "nan"
            )
        return value
    if isinstance(value, Mapping | list | tuple):
        if depth >= max_depth:
            raise NotStrictJson(
                f"{where}: nested deeper than {max_depth} levels, the limit (max_depth)",
                "max_depth",
            )
        if id(value) in path:
            raise NotStrictJson(f"{where}: the structure contains itself (a cycle)", "cycle")
        path.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for k, v in value.items():
                    key = _key(k, where)
                    if key in out:
                        raise NotStrictJson(
                            f"{where}: two keys become {key!r} in JSON; one would be lost",
                            "key_collision",
                        )
                    out[key] = _convert(v, max_depth, f"{where}.{key}", depth + 1, path)
                return out
            return [
                _convert(v, max_depth, f"{where}[{i}]", depth + 1, path)
                for i, v in enumerate(value)
            ]
        finally:
            path.discard(id(value))
    # Anything else (models, dataclasses, datetimes, enums, sets...): pydantic's JSON form,
    # checked in turn; a type without one is refused.
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:
        plain = to_jsonable_python(value, inf_nan_mode="constants")
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        rule = "cycle" if "ircular" in str(exc) else "type"
        raise NotStrictJson(
            f"{where}: a {type(value).__name__} has no JSON form ({exc})", rule
        ) from None
    if type(plain) is type(value):
        raise NotStrictJson(f"{where}: a {type(value).__name__} has no JSON form", "type")
    return _convert(plain, max_depth, where, depth, path)
