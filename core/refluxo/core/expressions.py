"""``{{ ... }}`` expressions in node data, evaluated by a small safe interpreter.

Inside the braces a Python-like expression reads earlier results and globals::

    "{{ fetch.last.data.name }}"        the output of node ``fetch``'s latest result, key name
    "{{ fetch.all }}"                   every result of ``fetch`` (each has ``.data``); fails
                                        once retention trimmed some (so does ``.first``)
    "{{ fetch.count }}"                 how many results ``fetch`` produced (retention-proof)
    "{{ nodes['my-node'].last.data }}"  node ids that are not identifiers
    "{{ globals.api_key }}"             one secret, by name: resolved for the executor
    "{{ get(globals, 'region', 'eu') }}"  a secret that may be missing, with a default
    "Hello {{ user.last.data.name }}!"  inside a longer string: the value is interpolated

The expression is parsed with :mod:`ast` and walked against an allow-list: names, attribute
and item access on data (never on Python objects, never underscore names), literals,
arithmetic, comparisons, boolean logic, conditional expressions and a few pure functions.
Nothing is ever passed to ``eval``.

Secrets are read one at a time, by a name written in the expression (``globals.NAME``,
``globals['NAME']``, ``get(globals, 'NAME', default)``), never as a whole (``json(globals)``,
``globals[some_expression]``). A value read from a secret is marked inside the evaluator: it
may be passed on (to the executor, into a text with ``+`` or a template, through ``str``,
``upper``, ``lower``, ``json``, or as part of a list or object), but not inspected: comparing
it, testing it, measuring it, indexing into its text, converting it to a number or formatting
it with ``%`` is refused, so an expression cannot reveal anything about a secret, and no error
message quotes one. What the executor then does with it is the engine's concern
(:mod:`refluxo.core.secrets` masks secrets in what a step records).

Node data may be written by an adversary, so every step is bounded (:class:`ExpressionLimits`):
integers, strings and collections have a maximum size that is checked *before* a result is
computed, and the evaluation of one node's data has an operation budget. Going over a limit
raises :class:`ExpressionError`, which fails the node without retries.
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from .errors import ExpressionError
from .model import NodeResult
from .secrets import Secret

_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_MAX_LENGTH = 1000
_GLOBALS = "globals"
_PASS_ON = frozenset({"str", "lower", "upper", "json"})
_NUMBER = (int, float)

_DIGITS = frozenset("0123456789*")


@dataclass(frozen=True)
class ExpressionLimits:
    """Bounds on what evaluating one node's expressions may cost.

    Attributes:
        max_operations: expression steps per node's data (every syntax node evaluated, every
            item a function walks, every template found); bounds CPU time.
        max_size: the largest string (characters), collection (items) or rendered text any
            single step may produce; checked before the result is built.
        max_total_size: the sum of the sizes of everything produced for one node's data.
        max_int_bits: the largest integer, in bits (4096 bits is about 1,233 digits).
        max_depth: how deeply expressions may nest.
        max_format_width: the largest width or precision in ``'%5.2f' % x`` formatting.
        max_round_digits: the largest ``abs(ndigits)`` of ``round(x, ndigits)``.
    """

    max_operations: int = 100_000
    max_size: int = 1_000_000
    max_total_size: int = 10_000_000
    max_int_bits: int = 4096
    max_depth: int = 100
    max_format_width: int = 1000
    max_round_digits: int = 400


DEFAULT_LIMITS = ExpressionLimits()


class Transform(Protocol):
    """Rewrites a node's data before its executor runs (a pipeline; each gets the last's output).

    ``context`` is node id -> results; ``globals`` are the caller's secrets and settings.
    """

    async def transform(
        self, data: Any, context: Mapping[str, list[NodeResult]], globals: Any
    ) -> Any:
        """Return the transformed data; raise to fail the node."""
        ...


def __getattr__(name: str) -> Any:
    if name == "TransformEngine":
        import warnings

        warnings.warn(
            "TransformEngine is deprecated: use Transform", DeprecationWarning, stacklevel=2
        )
        return Transform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ResultView:
    """What an expression sees of one result: ``data`` (its output), ``timestamp``, ``attempt``."""

    __slots__ = ("_result",)

    def __init__(self, result: NodeResult) -> None:
        self._result = result

    def attribute(self, name: str) -> Any:
        if name in ("data", "output"):
            return self._result.output
        if name in ("timestamp", "attempt", "error"):
            return getattr(self._result, name)
        raise ExpressionError(f"a result has data, timestamp, attempt and error, not {name!r}")


class NodeView:
    """What an expression sees of a node: ``last``, ``first``, ``all``, ``count``."""

    __slots__ = ("_count", "_node_id", "_results")

    def __init__(self, node_id: str, results: list[NodeResult], count: int) -> None:
        self._node_id = node_id
        self._results = results
        self._count = count

    def attribute(self, name: str) -> Any:
        if name == "last":
            return ResultView(self._results[-1]) if self._results else None
        if name == "first":
            self._untrimmed(name)
            return ResultView(self._results[0]) if self._results else None
        if name == "all":
            self._untrimmed(name)
            return [ResultView(r) for r in self._results]
        if name == "count":
            return self._count
        raise ExpressionError(
            f"node {self._node_id!r} has last, first, all and count, not {name!r}"
        )

    def _untrimmed(self, name: str) -> None:
        """Refuse ``first``/``all`` once retention trimmed results they would need."""
        kept = len(self._results)
        if self._count > kept:
            raise ExpressionError(
                f"{self._node_id}.{name} needs results the run no longer holds: node "
                f"{self._node_id!r} produced {self._count} results and the workflow's retention "
                f"keeps the newest {kept}; read .last or .count, or set retention=None on the "
                "workflow to keep every result"
            )


class _Scope:
    def __init__(self, context: Mapping[str, list[NodeResult]], globals_: Any) -> None:
        self.context = context
        self.globals = globals_ if globals_ is not None else {}

    def node(self, node_id: str) -> NodeView:
        results = self.context.get(node_id, [])
        count = getattr(self.context, "count", None)
        return NodeView(node_id, results, count(node_id) if count else len(results))

    def secret(self, name: str, expr: str) -> _Secret:
        if name.startswith("__"):
            raise ExpressionError(f"in {expr!r}: names starting with '__' are not allowed")
        if not isinstance(self.globals, Mapping) or name not in self.globals:
            raise ExpressionError(f"in {expr!r}: no secret named {name!r} for this workflow")
        return _Secret(self.globals[name])

    def name(self, name: str) -> Any:
        if name == "globals":
            raise ExpressionError(
                "secrets are read one at a time, by name: write globals.NAME, "
                "globals['NAME'] or get(globals, 'NAME', default)"
            )
        if name == "nodes":
            return _NodesView(self)
        if name in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[name]
        if name in self.context:
            return self.node(name)
        raise ExpressionError(f"unknown name {name!r}: no node of that id has run")


class _NodesView:
    def __init__(self, scope: _Scope) -> None:
        self.scope = scope


class _Secret:
    """A value read from a secret, inside the evaluator: it may be passed on, not inspected.

    Only the outermost value is ever marked: a list or object built with a marked part in it
    is marked as a whole (and its parts unmarked), so checking a value is O(1).
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _marked(value: Any) -> bool:
    return isinstance(value, _Secret)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, _Secret) else value


def _refused(what: str) -> ExpressionError:
    return ExpressionError(
        f"{what} a value read from globals is not allowed: a secret can be passed on, not inspected"
    )


def _unjson(value: Any, budget: _Budget) -> Any:
    """A view as the data it stands for; lists are copied (and paid for), views inside too."""
    if isinstance(value, ResultView):
        return value.attribute("data")
    if isinstance(value, NodeView):
        last = value.attribute("last")
        return None if last is None else last.attribute("data")
    if isinstance(value, list):
        budget.tick(len(value) // 16)  # a copy costs far less per item than a syntax node
        return [_unjson(v, budget) for v in value]
    return value


def _short(value: Any) -> str:
    """``repr(value)``, cut short: error messages are stored, and a key may be long."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _cut(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else f"{text[:197]}..."


def _member(obj: Any, key: Any, expr: str) -> Any:
    if isinstance(obj, ResultView | NodeView):
        if not isinstance(key, str):
            raise ExpressionError(f"in {expr!r}: use a name, not {_short(key)}")
        return obj.attribute(key)
    if isinstance(obj, _NodesView):
        if not isinstance(key, str):
            raise ExpressionError(f"in {expr!r}: nodes[...] takes a node id")
        return obj.scope.node(key)
    if obj is None:
        raise ExpressionError(f"in {expr!r}: cannot read {_short(key)} of nothing")
    if isinstance(obj, Mapping):
        if isinstance(key, list | dict) or key not in obj:
            raise ExpressionError(f"in {expr!r}: no key {_short(key)}")
        return obj[key]
    if isinstance(obj, list | tuple | str) and isinstance(key, int):
        try:
            return obj[key]
        except IndexError:
            raise ExpressionError(f"in {expr!r}: index {key} out of range") from None
    raise ExpressionError(f"in {expr!r}: cannot read {_short(key)} of a {type(obj).__name__}")


@lru_cache(maxsize=1024)
def _parse(expr: str) -> ast.Expression:
    if len(expr) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters")
    try:
        return ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {expr.strip()!r}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ExpressionError(f"cannot parse {_short(expr.strip())}: {reason}") from None


class _Budget:
    """What one node's expressions may still spend; raises ExpressionError when spent."""

    __slots__ = ("limits", "operations", "produced")

    def __init__(self, limits: ExpressionLimits) -> None:
        self.limits = limits
        self.operations = 0
        self.produced = 0

    def tick(self, n: int = 1) -> None:
        self.operations += n
        if self.operations > self.limits.max_operations:
            raise ExpressionError(
                f"expression budget exceeded: more than {self.limits.max_operations} "
                "operations for one node's data"
            )

    def allow(self, size: int, what: str) -> None:
        """Check, before building it, that a result of ``size`` fits; then account for it."""
        if size > self.limits.max_size:
            raise ExpressionError(
                f"{what} would be {size} long, over the limit of {self.limits.max_size}"
            )
        self.produced += size
        if self.produced > self.limits.max_total_size:
            raise ExpressionError(
                f"expression budget exceeded: more than {self.limits.max_total_size} "
                "characters produced for one node's data"
            )
        self.tick(1 + size // 4096)

    def integer(self, bits: int, what: str) -> None:
        if bits > self.limits.max_int_bits:
            raise ExpressionError(
                f"{what} would have {bits} bits, over the limit of {self.limits.max_int_bits}"
            )


def _json_chunks(value: Any) -> Iterator[str]:
    return json.JSONEncoder(separators=(",", ":"), default=str).iterencode(value)


def _json_size(value: Any, cap: int, budget: _Budget) -> int:
    """The length of ``value`` as compact JSON, counted without building it; stops past ``cap``."""
    size = 0
    count = 0
    for chunk in _json_chunks(value):
        size += len(chunk)
        count += 1
        if count % 16 == 0:
            budget.tick()
        if size > cap:
            return size
    return size


def _text_size(value: Any, cap: int, budget: _Budget) -> int:
    """An upper bound of ``len(str(value))`` (repr of containers, digits of numbers)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2
    if isinstance(value, float):
        return 32
    # repr escapes at most twice as long as JSON (quotes inside strings), never longer.
    return 2 * _json_size(value, cap, budget) + 2


class _Evaluation:
    """One node's expressions: the scope they read and the budget they share."""

    def __init__(self, scope: _Scope, budget: _Budget) -> None:
        self.scope = scope
        self.touched = False  # the expression being evaluated read a secret
        self.marked = False  # the last expression's value came from a secret
        self.budget = budget
        self.limits = budget.limits
        self._functions: dict[str, Callable[..., Any]] | None = None

    @property
    def functions(self) -> dict[str, Callable[..., Any]]:
        """The functions expressions may call, by name.

        Built on first use: most node data calls none, and the table, holding methods of this
        evaluation, would make every evaluation a reference cycle for the garbage collector.
        """
        if self._functions is None:
            self._functions = self._function_table()
        return self._functions

    def _function_table(self) -> dict[str, Callable[..., Any]]:
        return {
            "len": len,
            "str": self._str,
            "int": self._int,
            "float": self._float,
            "bool": bool,
            "abs": abs,
            "min": self._min,
            "max": self._max,
            "sum": self._sum,
            "round": self._round,
            "lower": lambda s: self._case(s, str.lower),
            "upper": lambda s: self._case(s, str.upper),
            "json": self._json,
            "get": lambda mapping, key, default=None: (
                mapping.get(key, default) if isinstance(mapping, Mapping) else default
            ),
        }

    # --- bounded functions ------------------------------------------------------------------

    def _str(self, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            self.budget.integer(value.bit_length(), "str() of an integer")
        self.budget.allow(_text_size(value, self.limits.max_size, self.budget), "str()")
        return str(value)

    def _int(self, value: Any, *base: Any) -> int:
        if isinstance(value, str):
            digits = self.limits.max_int_bits * 3 // 10 + 2
            if len(value) > digits + 64:
                raise ExpressionError(f"int() of a text longer than {digits} digits")
        result = int(value, *base)
        self.budget.integer(result.bit_length(), "int()")
        return result

    def _float(self, value: Any) -> float:
        if isinstance(value, str) and len(value) > 1000:
            raise ExpressionError("float() of a text longer than 1000 characters")
        return float(value)

    def weigh(self, value: Any) -> None:
        """Pay for an operation whose cost grows with the size of ``value`` (comparisons)."""
        if isinstance(value, str):
            self.budget.tick(len(value) // 1024)
        elif isinstance(value, list | tuple | Mapping):
            size = _json_size(value, self.limits.max_size, self.budget)
            if size > self.limits.max_size:
                raise ExpressionError(
                    f"a value over {self.limits.max_size} long cannot be compared"
                )

    def _items(self, args: tuple[Any, ...]) -> Any:
        items = args[0] if len(args) == 1 else args
        if isinstance(items, list | tuple | str | Mapping):
            self.budget.tick(len(items))
            self.weigh(items)
        return items

    def _min(self, *args: Any) -> Any:
        return min(self._items(args))

    def _max(self, *args: Any) -> Any:
        return max(self._items(args))

    def _sum(self, items: Any, start: Any = 0) -> Any:
        values = self._items((items,))
        if not isinstance(values, list | tuple) or not all(
            isinstance(v, _NUMBER) for v in [*values, start]
        ):
            raise ExpressionError("sum() adds numbers only")
        total = sum(values, start)
        if isinstance(total, int):
            self.budget.integer(total.bit_length(), "sum()")
        return total

    def _round(self, number: Any, ndigits: Any = None) -> Any:
        if ndigits is None:
            return round(number)
        if not isinstance(ndigits, int) or abs(ndigits) > self.limits.max_round_digits:
            raise ExpressionError(
                f"round() takes ndigits between -{self.limits.max_round_digits} and "
                f"{self.limits.max_round_digits}"
            )
        return round(number, ndigits)

    def _case(self, value: Any, change: Callable[[str], str]) -> str:
        text = value if isinstance(value, str) else self._str(value)
        # Case changes can grow a text (``'ß'.upper()`` is ``'SS'``), at most threefold.
        self.budget.allow(3 * len(text), "lower()/upper()")
        return change(text)

    def _json(self, value: Any) -> str:
        self.budget.allow(_json_size(value, self.limits.max_size, self.budget), "json()")
        return json.dumps(value, separators=(",", ":"), default=str)

    # --- bounded operators ------------------------------------------------------------------

    def _add(self, a: Any, b: Any) -> Any:
        if (isinstance(a, str) and isinstance(b, str)) or (
            isinstance(a, list) and isinstance(b, list)
        ):
            self.budget.allow(len(a) + len(b), "a concatenation")
        result = a + b
        if isinstance(result, int):
            self.budget.integer(result.bit_length(), "a sum")
        return result

    def _sub(self, a: Any, b: Any) -> Any:
        result = a - b
        if isinstance(result, int):
            self.budget.integer(result.bit_length(), "a difference")
        return result

    def _mul(self, a: Any, b: Any) -> Any:
        if not isinstance(a, _NUMBER) or not isinstance(b, _NUMBER):
            raise ExpressionError("repeating strings or lists is not allowed")
        if isinstance(a, int) and isinstance(b, int):
            self.budget.integer(a.bit_length() + b.bit_length(), "a product")
        return a * b

    def _mod(self, a: Any, b: Any) -> Any:
        if isinstance(a, str):
            args = tuple(b) if isinstance(b, list) else b
            self.budget.allow(self._format_size(a, args), "a %-formatted text")
            return a % args
        if not isinstance(a, _NUMBER) or not isinstance(b, _NUMBER):
            raise ExpressionError("% takes two numbers, or a format text and its values")
        return a % b

    def _format_size(self, fmt: str, args: Any) -> int:
        """An upper bound of ``len(fmt % args)``; refuses ``*`` and over-wide conversions."""
        size = len(fmt)
        positional = args if isinstance(args, tuple) else (args,)
        index = 0
        for key, width, kind in self._conversions(fmt):
            size += width
            if kind == "%":
                continue
            if key is not None:
                arg = args[key] if isinstance(args, Mapping) else None
            else:
                arg = positional[index] if index < len(positional) else None
                index += 1
            if kind in "ra" and isinstance(arg, str):
                size += 10 * len(arg) + 2  # ``\U0001f600``: ten characters for one
            elif kind in "sra":
                size += _text_size(arg, self.limits.max_size, self.budget)
            else:
                size += (arg.bit_length() if isinstance(arg, int) else 0) + 330
        return size

    def _conversions(self, fmt: str) -> Iterator[tuple[str | None, int, str]]:
        """Each ``%[(key)][flags][width][.precision][length]type`` of ``fmt``, in one pass.

        Yields the key, the width plus the precision, and the type.
        """
        limit = self.limits.max_format_width
        end = len(fmt)
        i = fmt.find("%")
        while i >= 0:
            self.budget.tick()
            i += 1
            key = None
            if i < end and fmt[i] == "(":
                close = fmt.find(")", i)
                if close < 0 or "(" in fmt[i + 1 : close]:
                    raise ExpressionError("a %-format key needs a ')' and no '(' inside")
                key, i = fmt[i + 1 : close], close + 1
            while i < end and fmt[i] in "-+ #0":
                i += 1
            width = 0
            for part in range(2):
                if part == 1:
                    if i >= end or fmt[i] != ".":
                        break
                    i += 1
                start = i
                while i < end and fmt[i] in _DIGITS and i - start <= 6:
                    i += 1
                digits = fmt[start:i]
                if "*" in digits:
                    raise ExpressionError("'*' widths are not allowed in % formatting")
                if digits and (len(digits) > 6 or int(digits) > limit):
                    raise ExpressionError(f"% formatting takes widths and precisions up to {limit}")
                width += int(digits or 0)
            while i < end and fmt[i] in "hlL":
                i += 1
            yield key, width, fmt[i : i + 1]
            i = fmt.find("%", i + 1)

    _BINOPS: dict[type[ast.operator], str] = {
        ast.Add: "_add",
        ast.Sub: "_sub",
        ast.Mult: "_mul",
        ast.Mod: "_mod",
    }

    # --- the walk ---------------------------------------------------------------------------

    def run(self, expr: str) -> Any:
        """The value of one expression, for the executor: texts from a secret as :class:`Secret`."""
        tree = _parse(expr)
        text = expr.strip()
        self.touched = False
        try:
            value = self.unjson(self.eval(tree, text, 0))
            self.marked = _marked(value)
            return self.export(value.value) if self.marked else value
        except ExpressionError:
            raise
        except RecursionError:
            raise ExpressionError(f"in {text!r}: nested too deeply") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            if self.touched:  # the details could quote a secret
                raise ExpressionError(f"in {text!r}: {type(exc).__name__}") from None
            raise ExpressionError(f"in {text!r}: {type(exc).__name__}: {_cut(exc)}") from None

    def export(self, value: Any) -> Any:
        """``value`` with each text in it a :class:`Secret` (new lists and objects)."""
        if isinstance(value, str):
            return Secret(value)
        if isinstance(value, list | tuple):
            self.budget.tick(len(value) // 16)
            return [self.export(v) for v in value]
        if isinstance(value, Mapping):
            self.budget.tick(len(value) // 16)
            return {k: self.export(v) for k, v in value.items()}
        return value

    def read_secret(self, name: str, expr: str) -> _Secret:
        self.touched = True
        return self.scope.secret(name, expr)

    def member(self, obj: Any, key: ast.AST, expr: str, depth: int) -> Any:
        """``obj.key`` or ``obj[key]``: by a literal name only when ``obj`` is a secret."""
        if _marked(obj):
            inner = _plain(obj)
            if not isinstance(key, ast.Constant) or isinstance(key.value, bool):
                raise _refused("reading a computed key or index of")
            if isinstance(inner, str) or not isinstance(inner, Mapping | list):
                raise _refused("indexing into the text of")
            try:
                return _Secret(_member(inner, key.value, expr))
            except ExpressionError:
                raise ExpressionError(f"in {expr!r}: a secret has no such key or index") from None
        value = self.eval(key, expr, depth)
        if _marked(value):
            raise _refused("using as a key or index")
        if isinstance(value, str) and value.startswith("__"):
            raise ExpressionError(f"in {expr!r}: names starting with '__' are not allowed")
        return _member(obj, value, expr)

    def unjson(self, value: Any) -> Any:
        return _unjson(value, self.budget)

    def items(self, nodes: list[ast.expr], expr: str, depth: int) -> tuple[list[Any], bool]:
        values = [self.unjson(self.eval(e, expr, depth)) for e in nodes]
        marked = any(_marked(v) for v in values)
        return [_plain(v) for v in values], marked

    def open(self, value: Any, what: str) -> Any:
        """``value`` for an operation that inspects it; refused for a secret."""
        value = self.unjson(value)
        if _marked(value):
            raise _refused(what)
        return value

    def eval(self, node: ast.AST, expr: str, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise ExpressionError(f"in {expr!r}: nested more than {self.limits.max_depth} deep")
        self.budget.tick()
        depth += 1
        match node:
            case ast.Expression(body=body):
                return self.eval(body, expr, depth)
            case ast.Constant(value=value):
                if value is None or isinstance(value, bool | float | str):
                    return value
                if isinstance(value, int):
                    self.budget.integer(value.bit_length(), "an integer literal")
                    return value
                raise ExpressionError(
                    f"in {expr!r}: {type(value).__name__} literals are not allowed"
                )
            case ast.Name(id=name):
                return self.scope.name(name)
            case ast.Attribute(value=value, attr=attr):
                if attr.startswith("_"):
                    raise ExpressionError(f"in {expr!r}: names starting with '_' are not allowed")
                if isinstance(value, ast.Name) and value.id == _GLOBALS:
                    return self.read_secret(attr, expr)
                return self.member(self.eval(value, expr, depth), ast.Constant(attr), expr, depth)
            case ast.Subscript(value=value, slice=index):
                if isinstance(value, ast.Name) and value.id == _GLOBALS:
                    if not isinstance(index, ast.Constant) or not isinstance(index.value, str):
                        raise ExpressionError(
                            f"in {expr!r}: a secret is read by a name written in the "
                            "expression (globals['NAME']), not a computed one"
                        )
                    return self.read_secret(index.value, expr)
                return self.member(self.eval(value, expr, depth), index, expr, depth)
            case ast.List(elts=elts) | ast.Tuple(elts=elts):
                values, marked = self.items(elts, expr, depth)
                return _Secret(values) if marked else values
            case ast.Dict(keys=keys, values=values):
                present = [k for k in keys if k is not None]
                if len(present) != len(keys):
                    raise ExpressionError(f"in {expr!r}: '**' is not allowed in expressions")
                names = [self.open(self.eval(k, expr, depth), "using as a key") for k in present]
                items, marked = self.items(values, expr, depth)
                result = dict(zip(names, items, strict=True))
                return _Secret(result) if marked else result
            case ast.BinOp(left=left, op=ast.Add(), right=right):
                a = self.unjson(self.eval(left, expr, depth))
                b = self.unjson(self.eval(right, expr, depth))
                marked = _marked(a) or _marked(b)
                a, b = _plain(a), _plain(b)
                if marked and not (
                    (isinstance(a, str) and isinstance(b, str))
                    or (isinstance(a, list) and isinstance(b, list))
                ):
                    raise _refused("arithmetic on")
                try:
                    result = self._add(a, b)
                except ExpressionError as exc:
                    raise ExpressionError(f"in {expr!r}: {_cut(exc)}") from None
                except (TypeError, OverflowError) as exc:
                    raise ExpressionError(f"in {expr!r}: {_cut(exc)}") from None
                return _Secret(result) if marked else result
            case ast.BinOp(left=left, op=op, right=right):
                a = self.open(self.eval(left, expr, depth), "arithmetic or formatting with")
                b = self.open(self.eval(right, expr, depth), "arithmetic or formatting with")
                try:
                    if type(op) in self._BINOPS:
                        return getattr(self, self._BINOPS[type(op)])(a, b)
                    if isinstance(op, ast.Div):
                        return operator.truediv(a, b)
                    if isinstance(op, ast.FloorDiv):
                        return operator.floordiv(a, b)
                except ExpressionError as exc:
                    raise ExpressionError(f"in {expr!r}: {_cut(exc)}") from None
                except (TypeError, ZeroDivisionError, OverflowError, ValueError) as exc:
                    raise ExpressionError(f"in {expr!r}: {_cut(exc)}") from None
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                return not self.open(self.eval(operand, expr, depth), "testing")
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return -self.open(self.eval(operand, expr, depth), "arithmetic on")
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return +self.open(self.eval(operand, expr, depth), "arithmetic on")
            case ast.BoolOp(op=op, values=values):
                outcome: Any = None
                for v in values:
                    outcome = self.open(self.eval(v, expr, depth), "testing")
                    if isinstance(op, ast.And) and not outcome:
                        return outcome
                    if isinstance(op, ast.Or) and outcome:
                        return outcome
                return outcome
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                current = self.open(self.eval(left, expr, depth), "comparing")
                for cmp, comparator in zip(ops, comparators, strict=True):
                    if type(cmp) not in _CMPOPS:
                        break
                    other = self.open(self.eval(comparator, expr, depth), "comparing")
                    self.weigh(current)
                    self.weigh(other)
                    try:
                        if not _CMPOPS[type(cmp)](current, other):
                            return False
                    except TypeError as exc:
                        raise ExpressionError(f"in {expr!r}: {_cut(exc)}") from None
                    current = other
                else:
                    return True
            case ast.IfExp(test=test, body=body, orelse=orelse):
                chosen = body if self.open(self.eval(test, expr, depth), "testing") else orelse
                return self.eval(chosen, expr, depth)
            case ast.Call(
                func=ast.Name(id="get"), args=[ast.Name(id="globals"), name, *default], keywords=[]
            ):
                if not isinstance(name, ast.Constant) or not isinstance(name.value, str):
                    raise ExpressionError(
                        f"in {expr!r}: get(globals, ...) takes a secret's name written in the "
                        "expression, not a computed one"
                    )
                if len(default) > 1:
                    raise ExpressionError(f"in {expr!r}: get() takes at most three arguments")
                if isinstance(self.scope.globals, Mapping) and name.value in self.scope.globals:
                    return self.read_secret(name.value, expr)
                return self.eval(default[0], expr, depth) if default else None
            case ast.Call(func=ast.Name(id=fname), args=args, keywords=[]) if (
                fname in self.functions
            ):
                raw = [self.unjson(self.eval(a, expr, depth)) for a in args]
                marks = [_marked(v) for v in raw]
                values = [_plain(v) for v in raw]
                marked = any(marks)
                if fname == "get" and marked:
                    if len(marks) > 1 and (marks[1] or not isinstance(args[1], ast.Constant)):
                        raise _refused("using as a key, or reading a computed key of,")
                elif marked and fname not in _PASS_ON:
                    raise _refused(f"{fname}() of")
                try:
                    result = self.functions[fname](*values)
                except ExpressionError as exc:
                    raise ExpressionError(f"in {expr!r}: {fname}(): {_cut(exc)}") from None
                except (TypeError, ValueError, OverflowError) as exc:
                    if marked:
                        raise ExpressionError(f"in {expr!r}: {fname}() failed") from None
                    raise ExpressionError(f"in {expr!r}: {fname}(): {_cut(exc)}") from None
                return _Secret(result) if marked else result
        raise ExpressionError(f"in {expr!r}: {type(node).__name__} is not allowed in expressions")


def evaluate(
    expr: str,
    context: Mapping[str, list[NodeResult]],
    globals: Any = None,
    *,
    limits: ExpressionLimits = DEFAULT_LIMITS,
) -> Any:
    """Evaluate one expression (the text between the braces) and return a plain value."""
    return _Evaluation(_Scope(context, globals), _Budget(limits)).run(expr)


def _render(value: Any, evaluation: _Evaluation) -> str:
    if isinstance(value, str):
        return value
    return evaluation._json(value)


def _templates(text: str) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` of each ``{{ ... }}`` in ``text``, left to right, in linear time.

    Each search starts where the previous one stopped: an opening ``{{`` without a closing
    ``}}`` ends the scan, since no later ``{{`` can have one either.
    """
    position = 0
    while True:
        start = text.find("{{", position)
        if start < 0:
            return
        end = text.find("}}", start + 2)
        if end < 0:
            return
        yield start, end + 2
        position = end + 2


def _resolve(data: Any, evaluation: _Evaluation) -> Any:
    if isinstance(data, str):
        if "{{" not in data:
            return data
        whole = data.strip()
        if whole.startswith("{{") and whole.endswith("}}") and "{{" not in whole[2:-2]:
            return evaluation.run(whole[2:-2])
        parts: list[str] = []
        marked = False
        size = 0
        position = 0
        for start, end in _templates(data):
            evaluation.budget.tick()
            rendered = _render(evaluation.run(data[start + 2 : end - 2]), evaluation)
            marked = marked or evaluation.marked
            parts.append(data[position:start])
            parts.append(rendered)
            size += start - position + len(rendered)
            if size > evaluation.limits.max_size:
                evaluation.budget.allow(size, "an interpolated text")
            position = end
        if not parts:
            return data
        parts.append(data[position:])
        evaluation.budget.allow(size + len(data) - position, "an interpolated text")
        return Secret("".join(parts)) if marked else "".join(parts)
    if isinstance(data, list):
        return [_resolve(v, evaluation) for v in data]
    if isinstance(data, dict):
        return {k: _resolve(v, evaluation) for k, v in data.items()}
    return data


def resolve(
    data: Any,
    context: Mapping[str, list[NodeResult]],
    globals: Any = None,
    *,
    limits: ExpressionLimits = DEFAULT_LIMITS,
) -> Any:
    """Return ``data`` with every ``{{ ... }}`` in its strings evaluated (a new structure).

    A string that is one expression alone becomes the expression's value, whatever its type;
    expressions inside a longer string are interpolated as text (JSON for non-strings). All
    the expressions of ``data`` share one budget (``limits``).

    Raises:
        ExpressionError: an expression is invalid, fails, or goes over a limit.
    """
    copied = _copy_plain(data)
    if copied is not _TEMPLATED:
        return copied
    return _resolve(data, _Evaluation(_Scope(context, globals), _Budget(limits)))


_TEMPLATED = object()


def _copy_plain(data: Any) -> Any:
    """What :func:`_resolve` makes of ``data`` when none of its strings holds ``{{`` (the
    same new structure, built without setting up an evaluation); else ``_TEMPLATED``."""
    if isinstance(data, str):
        return _TEMPLATED if "{{" in data else data
    if isinstance(data, list):
        items = []
        for value in data:
            value = _copy_plain(value)
            if value is _TEMPLATED:
                return _TEMPLATED
            items.append(value)
        return items
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            if type(value) is str:  # most node data: checked inline
                if "{{" in value:
                    return _TEMPLATED
            else:
                value = _copy_plain(value)
                if value is _TEMPLATED:
                    return _TEMPLATED
            out[key] = value
        return out
    return data


class ExpressionTransform:
    """The built-in transform: resolves ``{{ ... }}`` expressions in node data.

    Args:
        limits: what evaluating one node's data may cost; see :class:`ExpressionLimits`.
    """

    def __init__(self, limits: ExpressionLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    async def transform(
        self, data: Any, context: Mapping[str, list[NodeResult]], globals: Any
    ) -> Any:
        return resolve(data, context, globals, limits=self.limits)
