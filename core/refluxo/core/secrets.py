"""Keeping the deployment's secrets (``globals``) out of snapshots and logs.

Executors receive ``globals`` as they are; whatever a step records (its output, its error
message) first goes through :class:`Redactor`, which masks every secret in the forms it is
commonly shown in: as is, upper- or lower-cased (matched without regard to case), escaped by
``repr``, JSON, HTML or URL encoding (and one of these inside another), base64-encoded (also
inside a longer base64 text such as an HTTP ``Basic`` credential) and, for a number or a text
that is one, as that number. Every leaf of ``globals`` (texts, numbers, inside nested objects
and lists too) is a secret, whatever its length; ``True``, ``False``, ``None`` and empty texts
are not.

What is not covered: a secret transformed in any other way (hashed, encrypted, reversed,
sliced, hex- or base32-encoded, split across fields), or sent by an executor somewhere else.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
"""What a secret is replaced with."""


class Secret(str):
    """A text that ``{{ ... }}`` expressions made from a secret, as the executor receives it.

    It is a ``str`` in every way but ``repr``, which shows ``'***'`` (so a traceback or a
    validation error that quotes it does not show it). Executors that compare or branch on their
    input (a generic "if" node) can refuse such values. Operations on it return plain ``str``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


_INTEGER = re.compile(r"[-+]?\d{1,64}")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d{1,3})?")


def _html_escape(text: str) -> str:
    import html  # here, not at import time: only a run with secrets needs it

    return html.escape(text)


_ESCAPES: tuple[Callable[[str], str], ...] = (
    lambda s: s.encode("unicode_escape").decode("ascii"),
    lambda s: repr(s)[1:-1],
    lambda s: ascii(s)[1:-1],
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    _html_escape,
    lambda s: quote(s, safe=""),
    quote,
    lambda s: quote_plus(s, safe=""),
    quote_plus,
)


def _leaves(value: Any) -> Iterable[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, str | int | float):
            yield item


def _base64_forms(raw: bytes) -> set[str]:
    """The base64 texts of ``raw`` alone, and the part of it that shows wherever it is placed.

    Matched with their case: a short one would otherwise match ordinary words.
    """
    forms: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode("ascii")
        forms.add(whole)
        if len(whole.rstrip("=")) >= 4:
            forms.add(whole.rstrip("="))
        for offset in range(3):
            # Preceded by `offset` other bytes (``user:`` before a password), the characters
            # that encode only bits of ``raw`` are the same whatever those bytes are.
            text = encode(b"\0" * offset + raw).decode("ascii").rstrip("=")
            first = -(-offset * 8 // 6)
            last = (offset + len(raw)) * 8 // 6
            inner = text[first:last]
            if len(inner) >= 4:
                forms.add(inner)
    return forms


def _text_forms(secret: str) -> set[str]:
    """The forms of ``secret`` that are matched without regard to case."""
    bases = {secret, secret.upper(), secret.lower()}
    once = {escape(b) for b in bases for escape in _ESCAPES}
    twice = {escape(e) for e in once for escape in _ESCAPES}
    return {f.lower() for f in bases | once | twice if f}


def _numbers(secret: str | int | float) -> set[int | float]:
    if isinstance(secret, int | float):
        if isinstance(secret, float) and not math.isfinite(secret):
            return set()
        numbers: set[int | float] = {secret}
        if isinstance(secret, float) and secret.is_integer():
            numbers.add(int(secret))
        return numbers
    text = secret.strip()
    if _INTEGER.fullmatch(text):
        return {int(text)}
    if _DECIMAL.fullmatch(text):
        number = float(text)
        return _numbers(number) if math.isfinite(number) else set()
    return set()


class Redactor:
    """Masks the secrets of one ``globals`` value in texts and in JSON-like values.

    Build it with :func:`redactor` (cached per distinct ``globals``).
    """

    def __init__(self, secrets: Any) -> None:
        # Per secret: the forms matched without regard to case (lower-cased), then the
        # forms matched exactly (base64).
        self._groups: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self._numbers: set[int | float] = set()
        seen: set[Any] = set()
        for leaf in _leaves(secrets):
            key = (type(leaf), leaf)
            if key in seen:
                continue
            seen.add(key)
            numbers = _numbers(leaf)
            self._numbers |= numbers
            text = str(leaf)
            if not text:
                continue
            texts = _text_forms(text) | {f for n in numbers for f in (str(n), repr(n))}
            exact = _base64_forms(text.encode("utf-8"))
            self._groups.append((tuple(sorted(texts)), tuple(sorted(exact))))

    def __bool__(self) -> bool:
        return bool(self._groups or self._numbers)

    def _candidates(self, text: str) -> frozenset[int]:
        lowered = text.lower()
        return frozenset(
            i
            for i, (texts, exact) in enumerate(self._groups)
            if any(f in lowered for f in texts) or any(f in text for f in exact)
        )

    @staticmethod
    @lru_cache(maxsize=256)
    def _pattern(texts: tuple[str, ...], exact: tuple[str, ...]) -> re.Pattern[str]:
        forms = [(f, f"(?i:{re.escape(f)})") for f in texts] + [(f, re.escape(f)) for f in exact]
        forms.sort(key=lambda pair: len(pair[0]), reverse=True)  # the longest form first
        return re.compile("|".join(pattern for _, pattern in forms))

    def _matcher(self, groups: frozenset[int]) -> re.Pattern[str] | None:
        if not groups:
            return None
        texts = tuple(sorted({f for i in groups for f in self._groups[i][0]}))
        exact = tuple(sorted({f for i in groups for f in self._groups[i][1]}))
        return self._pattern(texts, exact)

    def text(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        matcher = self._matcher(self._candidates(text)) if self._groups else None
        return text if matcher is None else matcher.sub(MASK, text)

    def value(self, value: Any) -> Any:
        """A copy of the JSON-like ``value`` with secrets masked in every text and key.

        A number equal to a secret (or to a secret text that is a number) becomes ``"***"``.
        """
        if not self:
            return value
        try:
            blob = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            blob = str(value)
        matcher = self._matcher(self._candidates(blob))
        if matcher is None and not self._numbers:
            return value
        return self._walk(value, matcher)

    def _walk(self, value: Any, matcher: re.Pattern[str] | None) -> Any:
        if isinstance(value, str):
            return value if matcher is None else matcher.sub(MASK, value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            return MASK if value in self._numbers else value
        if isinstance(value, Mapping):
            return {
                self._walk(k, matcher) if isinstance(k, str) else k: self._walk(v, matcher)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._walk(v, matcher) for v in value]
        return value


_EMPTY = Redactor(None)


@lru_cache(maxsize=64)
def _cached(canonical: str) -> Redactor:
    return Redactor(json.loads(canonical))


def redactor(secrets: Any) -> Redactor:
    """The :class:`Redactor` for ``secrets`` (a deployment's ``globals``); cached."""
    if secrets is None:
        return _EMPTY
    try:
        canonical = json.dumps(secrets, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return Redactor(secrets)
    return _cached(canonical)
