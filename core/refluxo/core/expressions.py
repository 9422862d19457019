"""``{{ ... }}`` expressions in node data, evaluated by a small safe interpreter.

Inside the braces a Python-like expression reads earlier results and globals::

    "{{ fetch.last.data.name }}"        the output of node ``fetch``'s latest result, key name
    "{{ fetch.all }}"                   every recorded result of ``fetch`` (each has ``.data``)
    "{{ fetch.count }}"                 how many results ``fetch`` produced (retention-proof)
    "{{ nodes['my-node'].last.data }}"  node ids that are not identifiers
    "{{ globals.api_key }}"             secrets: resolved for the executor, never stored
    "{{ get(globals, 'region', 'eu') }}"  a key that may be missing, with a default
    "Hello {{ user.last.data.name }}!"  inside a longer string: the value is interpolated

The expression is parsed with :mod:`ast` and walked against an allow-list: names, attribute
and item access on data (never on Python objects, never underscore names), literals,
arithmetic, comparisons, boolean logic, conditional expressions and a few pure functions.
Nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Protocol

from .errors import ExpressionError
from .model import NodeResult

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
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
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "min": min,
    "max": max,
    "sum": sum,
    "round": round,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "json": lambda v: json.dumps(v, separators=(",", ":")),
    "get": lambda mapping, key, default=None: (
        mapping.get(key, default) if isinstance(mapping, Mapping) else default
    ),
}
_MAX_LENGTH = 1000


class TransformEngine(Protocol):
    """Rewrites a node's data before its executor runs (a pipeline; each gets the last's output).

    ``context`` is node id -> results; ``globals`` are the caller's secrets and settings.
    """

    async def transform(
        self, data: Any, context: Mapping[str, list[NodeResult]], globals: Any
    ) -> Any:
        """Return the transformed data; raise to fail the node."""
        ...


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
            return ResultView(self._results[0]) if self._results else None
        if name == "all":
            return [ResultView(r) for r in self._results]
        if name == "count":
            return self._count
        raise ExpressionError(
            f"node {self._node_id!r} has last, first, all and count, not {name!r}"
        )


class _Scope:
    def __init__(self, context: Mapping[str, list[NodeResult]], globals_: Any) -> None:
        self.context = context
        self.globals = globals_ if globals_ is not None else {}

    def node(self, node_id: str) -> NodeView:
        results = self.context.get(node_id, [])
        count = getattr(self.context, "count", None)
        return NodeView(node_id, results, count(node_id) if count else len(results))

    def name(self, name: str) -> Any:
        if name == "globals":
            return self.globals
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


def _unjson(value: Any) -> Any:
    if isinstance(value, ResultView):
        return value.attribute("data")
    if isinstance(value, NodeView):
        last = value.attribute("last")
        return None if last is None else last.attribute("data")
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


def _member(obj: Any, key: Any, expr: str) -> Any:
    if isinstance(obj, ResultView | NodeView):
        if not isinstance(key, str):
            raise ExpressionError(f"in {expr!r}: use a name, not {key!r}")
        return obj.attribute(key)
    if isinstance(obj, _NodesView):
        if not isinstance(key, str):
            raise ExpressionError(f"in {expr!r}: nodes[...] takes a node id")
        return obj.scope.node(key)
    if obj is None:
        raise ExpressionError(f"in {expr!r}: cannot read {key!r} of nothing")
    if isinstance(obj, Mapping):
        if key not in obj:
            raise ExpressionError(f"in {expr!r}: no key {key!r}")
        return obj[key]
    if isinstance(obj, list | tuple | str) and isinstance(key, int):
        try:
            return obj[key]
        except IndexError:
            raise ExpressionError(f"in {expr!r}: index {key} out of range") from None
    raise ExpressionError(f"in {expr!r}: cannot read {key!r} of a {type(obj).__name__}")


@lru_cache(maxsize=1024)
def _parse(expr: str) -> ast.Expression:
    if len(expr) > _MAX_LENGTH:
        raise ExpressionError(f"expression longer than {_MAX_LENGTH} characters")
    try:
        return ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid expression {expr.strip()!r}: {exc.msg}") from None


def _eval(node: ast.AST, scope: _Scope, expr: str) -> Any:
    match node:
        case ast.Expression(body=body):
            return _eval(body, scope, expr)
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            return scope.name(name)
        case ast.Attribute(value=value, attr=attr):
            if attr.startswith("_"):
                raise ExpressionError(f"in {expr!r}: names starting with '_' are not allowed")
            return _member(_eval(value, scope, expr), attr, expr)
        case ast.Subscript(value=value, slice=index):
            key = _eval(index, scope, expr)
            if isinstance(key, str) and key.startswith("__"):
                raise ExpressionError(f"in {expr!r}: names starting with '__' are not allowed")
            return _member(_eval(value, scope, expr), key, expr)
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            return [_unjson(_eval(e, scope, expr)) for e in elts]
        case ast.Dict(keys=keys, values=values):
            return {
                _eval(k, scope, expr): _unjson(_eval(v, scope, expr))
                for k, v in zip(keys, values, strict=True)
                if k is not None
            }
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINOPS:
            a, b = _unjson(_eval(left, scope, expr)), _unjson(_eval(right, scope, expr))
            if isinstance(op, ast.Mult) and (
                isinstance(a, str | list) or isinstance(b, str | list)
            ):
                raise ExpressionError(f"in {expr!r}: repeating strings or lists is not allowed")
            try:
                return _BINOPS[type(op)](a, b)
            except (TypeError, ZeroDivisionError) as exc:
                raise ExpressionError(f"in {expr!r}: {exc}") from None
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return not _unjson(_eval(operand, scope, expr))
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_unjson(_eval(operand, scope, expr))
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return +_unjson(_eval(operand, scope, expr))
        case ast.BoolOp(op=op, values=values):
            result: Any = None
            for v in values:
                result = _unjson(_eval(v, scope, expr))
                if isinstance(op, ast.And) and not result:
                    return result
                if isinstance(op, ast.Or) and result:
                    return result
            return result
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            current = _unjson(_eval(left, scope, expr))
            for cmp, comparator in zip(ops, comparators, strict=True):
                if type(cmp) not in _CMPOPS:
                    break
                other = _unjson(_eval(comparator, scope, expr))
                try:
                    if not _CMPOPS[type(cmp)](current, other):
                        return False
                except TypeError as exc:
                    raise ExpressionError(f"in {expr!r}: {exc}") from None
                current = other
            else:
                return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            chosen = body if _unjson(_eval(test, scope, expr)) else orelse
            return _eval(chosen, scope, expr)
        case ast.Call(func=ast.Name(id=fname), args=args, keywords=[]) if fname in _FUNCTIONS:
            values = [_unjson(_eval(a, scope, expr)) for a in args]
            try:
                return _FUNCTIONS[fname](*values)
            except (TypeError, ValueError) as exc:
                raise ExpressionError(f"in {expr!r}: {fname}(): {exc}") from None
    raise ExpressionError(f"in {expr!r}: {type(node).__name__} is not allowed in expressions")


def evaluate(
    expr: str,
    context: Mapping[str, list[NodeResult]],
    globals: Any = None,
) -> Any:
    """Evaluate one expression (the text between the braces) and return a plain value."""
    return _unjson(_eval(_parse(expr), _Scope(context, globals), expr.strip()))


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def resolve(data: Any, context: Mapping[str, list[NodeResult]], globals: Any = None) -> Any:
    """Return ``data`` with every ``{{ ... }}`` in its strings evaluated (a new structure).

    A string that is one expression alone becomes the expression's value, whatever its type;
    expressions inside a longer string are interpolated as text (JSON for non-strings).
    """
    if isinstance(data, str):
        if "{{" not in data:
            return data
        match = _TEMPLATE.fullmatch(data.strip())
        if match and "{{" not in match.group(1):
            return evaluate(match.group(1), context, globals)
        return _TEMPLATE.sub(lambda m: _render(evaluate(m.group(1), context, globals)), data)
    if isinstance(data, list):
        return [resolve(v, context, globals) for v in data]
    if isinstance(data, dict):
        return {k: resolve(v, context, globals) for k, v in data.items()}
    return data


class ExpressionTransform:
    """The built-in transform engine: resolves ``{{ ... }}`` expressions in node data."""

    async def transform(
        self, data: Any, context: Mapping[str, list[NodeResult]], globals: Any
    ) -> Any:
        return resolve(data, context, globals)
