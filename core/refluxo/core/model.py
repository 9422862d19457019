"""The wire models: workflow definitions and snapshots.

Python attributes are snake_case; JSON uses the camelCase names of the TypeScript engine and
epoch-millisecond timestamps, so a snapshot written by either engine loads in the other.
Unknown fields are kept on load and written back on dump.
"""

from __future__ import annotations

import hashlib
import json
import operator
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticSerializationError, from_json, to_json

Status = Literal["active", "paused", "error", "completed", "failed"]
"""A run's status. ``error`` means a retry is pending; ``failed`` is final."""

M = TypeVar("M", bound=BaseModel)

TERMINAL: frozenset[str] = frozenset({"completed", "failed"})

JoinMode = Literal["all", "any"]
"""How a join node waits for its incoming branches: for every one, or for the first."""

BranchStatus = Literal["active", "paused", "error", "joined", "completed", "failed"]
"""A branch's status: the run statuses, plus ``joined`` (parked at a join node)."""


def now_ms() -> int:
    """The current time in epoch milliseconds (the default clock)."""
    return time.time_ns() // 1_000_000


def _is_none(value: Any) -> bool:
    return value is None


# Default factories written in Python: pydantic reads a factory's signature, and on CPython
# before 3.12 reading a builtin's (``list``, ``dict``) compiles the tokenizer's regular
# expressions: several milliseconds of a cold start.
def _empty_list() -> list[Any]:
    return []


def _empty_dict() -> dict[str, Any]:
    return {}


def _optional(default: Any = None) -> Any:
    """An optional field left out of the JSON while unset, as the TypeScript engine does."""
    return Field(default=default, exclude_if=_is_none)


def _prove(raw: str, refuse: Callable[[str], Exception]) -> Any:
    """Raise ``refuse(why)`` unless ``raw`` parses (strictly, within 200 levels) and writing
    what it parsed gives the same bytes; return what it parsed."""
    try:
        back = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise refuse(f"{exc} (NaN, Infinity, or nested too deep)") from None
    if to_json(back) != raw.encode("utf-8"):
        raise refuse("two keys of one object become the same string")
    return back


def _known_prefix(results: list[Any], known: list[NodeResult] | None) -> int:
    """How many of the first ``results`` are, in order, a run of the very ``known`` objects
    (the engine appends to a node's results and retention drops the oldest)."""
    if not known or not results:
        return 0
    first = results[0]
    start = next((i for i, r in enumerate(known) if r is first), None)
    if start is None:
        return 0
    same = list(map(operator.is_, results, known[start:]))
    return same.index(False) if False in same else len(same)


def _plain_results(context: dict[str, list[NodeResult]]) -> dict[str, list[NodeResult]]:
    """``context``'s results, as :attr:`_Proven.results` (empty when it is not what validation
    makes)."""
    known: dict[str, list[NodeResult]] = {}
    for node_id, results in context.items():
        if type(node_id) is not str or type(results) is not list:
            return {}
        known[node_id] = list(results)
    return known


class _Proven:
    """What is known of a snapshot's JSON. Not part of a snapshot's value: every two compare
    equal, and copies share it until their own ``to_json`` replaces it.

    Attributes:
        results: per node, results known to read back as they are (a list of its own; known
            by identity: the objects are kept, so an id is never another object's).
        results_exact: whether every result in ``results`` is also known to decode as an
            equal one (True when loaded from JSON, or once a store was told so).
        raw: the JSON text the last ``to_json`` wrote, or None.
        back: what proving the whole of ``raw`` parsed, kept to tell :attr:`exact` on demand.
        exact: whether decoding ``raw`` gives an equal snapshot (every value a plain JSON
            value), or None while not yet told.
    """

    __slots__ = ("back", "exact", "raw", "results", "results_exact")

    def __init__(
        self,
        results: dict[str, list[NodeResult]],
        raw: str | None = None,
        back: Any = None,
        exact: bool | None = None,
        results_exact: bool = False,
    ) -> None:
        self.results = results
        self.raw = raw
        self.back = back
        self.exact = exact
        self.results_exact = results_exact

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Proven)

    __hash__ = None  # type: ignore[assignment]

    def __copy__(self) -> _Proven:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Proven:
        return self


_NOTHING_PROVEN = _Proven({})

WHOLE_PROOF_BELOW = 2 * 1024
"""Below this many characters, a snapshot's JSON is proven whole: one parse costs less than
proving its parts apart."""

PROVEN_APART_AT_MOST = 16
"""A larger snapshot's JSON is proven whole, too, when more results than this are new to it
(a snapshot built or changed without ``to_json`` in between)."""


class WireModel(BaseModel):
    """Base of every JSON model: camelCase aliases, unknown fields kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="allow",
        # NaN and Infinity are written as tokens, so Snapshot.to_json sees and refuses them.
        ser_json_inf_nan="constants",
    )

    def to_json(self) -> str:
        """This model as compact JSON, with the wire (camelCase) names."""
        return self.model_dump_json(by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        """This model as a JSON-compatible dict, with the wire (camelCase) names."""
        return self.model_dump(mode="json", by_alias=True)


class Node(WireModel):
    """One unit of work in a workflow graph."""

    id: str
    type: str
    data: Any = None
    metadata: Any = _optional()
    join: JoinMode | None = _optional()
    """On a node where branches meet: wait for ``all`` of them (the default) or ``any``."""
    on_branch_failure: Literal["fail", "continue"] | None = _optional()
    """On a node with several edges for one handle (a fork): what a failed branch does. ``fail``
    (the default) fails the run; ``continue`` records the failure and joins the others."""


class Edge(WireModel):
    """A connection from ``source`` to ``target``, taken when the source's handle matches."""

    id: str
    source: str
    target: str
    source_handle: str | None = _optional()


class WorkflowDefinition(WireModel):
    """A workflow graph: nodes and the edges between them. Loads from plain JSON."""

    nodes: list[Node]
    edges: list[Edge] = Field(default_factory=_empty_list)

    def shape_hash(self) -> str:
        """A hash of what a running snapshot depends on: node ids and types, and the edges.

        Node ``data`` is left out on purpose: changing a node's configuration is a compatible
        change and runs in flight pick it up; renaming, retyping or rewiring nodes is not.
        """
        shape = {
            "nodes": sorted([n.id, n.type, *([n.join] if n.join else [])] for n in self.nodes),
            "edges": sorted([e.source, e.source_handle or "", e.target] for e in self.edges),
        }
        raw = json.dumps(shape, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


class NodeResult(WireModel):
    """One execution of a node: its output, or the error it raised."""

    output: Any = None
    timestamp: int
    error: str | None = _optional()
    attempt: int = 1


class RetryState(WireModel):
    """The retry pending on a node while the run's status is ``error``."""

    node_id: str
    attempts: int
    next_retry_at: int | None = _optional()


class WaitState(WireModel):
    """What a paused run waits for.

    ``kind == "sleep"``: the run wakes at ``until`` and goes on with ``currentNodeId``.
    ``kind == "event"``: the current node runs again with the event's payload; when ``until``
    passes first, the run follows the node's ``timeout`` edge (or fails without one).
    """

    kind: Literal["sleep", "event"]
    until: int | None = _optional()
    event: str | None = _optional()


class Event(WireModel):
    """An external event delivered to a run and not yet consumed by a waiting node."""

    payload: Any = None
    name: str | None = _optional()
    received_at: int
    id: str | None = _optional()


class DefinitionRef(WireModel):
    """Which workflow definition a run executes: its name and :meth:`shape_hash`."""

    name: str
    hash: str


class BranchState(WireModel):
    """One parallel branch of a run: where it is and what it waits for.

    A branch steps on its own deliveries (``DispatchMessage.branch``); ``version`` counts its
    steps, as a run's ``version`` counts the run's.
    """

    node_id: str | None
    status: BranchStatus
    version: int = 0
    source: str | None = _optional()
    """The last node the branch finished (its result is what the join receives)."""
    wait: WaitState | None = _optional()
    retry_state: RetryState | None = _optional()
    joined: dict[str, Any] | None = _optional()
    """The results a released join node receives as its external payload."""
    on_failure: Literal["fail", "continue"] | None = _optional()
    error: str | None = _optional()
    """Why the branch failed (``status == "failed"``, kept when failures continue)."""


class Snapshot(WireModel):
    """The whole state of a run. JSON round-trips losslessly; extra fields are kept.

    The fields after ``retry_state`` are refluxo's additions to the TypeScript engine's
    snapshot; they are left out of the JSON while unset, so a TypeScript snapshot loads
    unchanged and one written here loads there.
    """

    run_id: str = Field(alias="workflowId")
    """The run's id: ``workflowId`` on the wire, the TypeScript engine's name for it."""
    status: Status
    current_node_id: str | None
    context: dict[str, list[NodeResult]] = Field(default_factory=_empty_dict)
    version: int = 0
    last_started_at: int | None = _optional()
    total_execution_time: int | None = _optional()
    metadata: dict[str, Any] = Field(default_factory=_empty_dict)
    retry_state: RetryState | None = _optional()
    wait: WaitState | None = _optional()
    definition: DefinitionRef | None = _optional()
    input: Any = _optional()
    inbox: list[Event] | None = _optional()
    consumed_events: list[str] | None = _optional()
    counts: dict[str, int] | None = _optional()
    step_version: int | None = _optional()
    """The version the last step saved, while events added since moved ``version`` on (None
    when they are equal): a delivery for it still runs the step, and the step's save keeps the
    events that arrived meanwhile."""
    chained_from: int | None = _optional()
    """Set on a step's save when one delivery ran it after others in a row: the version that
    delivery's message named. A redelivery of that message (the delivery died between a save
    and scheduling what follows) finds it here and schedules the run's next delivery."""
    input_pending: bool | None = _optional()
    """True while the run's input is still to be given to a step: its first node gets it, on
    every attempt, until that node succeeds, pauses or is left by a timeout."""
    branches: dict[str, BranchState] | None = _optional()
    """The parallel branches in flight, by id (None while the run has none). While it has
    branches, a run is ``active`` with no current node: each branch has its own."""
    joined: dict[str, Any] | None = _optional()
    """What the join node about to run receives: ``{branch's last node id: its output}``."""

    _proven: _Proven = PrivateAttr(default=_NOTHING_PROVEN)

    if not TYPE_CHECKING:
        # Hidden from the type checker, which keeps the typed constructor of the fields.
        def __init__(self, /, **data: Any) -> None:
            if "workflow_id" in data:
                warnings.warn(
                    "Snapshot(workflow_id=...) is deprecated: use run_id=...",
                    DeprecationWarning,
                    stacklevel=2,
                )
                data.setdefault("run_id", data.pop("workflow_id"))
            super().__init__(**data)

        # Only the Python constructor needs the shim: marked as pydantic's own, so loading
        # JSON validates in one pass instead of turning the JSON into dicts for __init__.
        __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @property
    def workflow_id(self) -> str:
        """Deprecated name of :attr:`run_id`."""
        warnings.warn(
            "Snapshot.workflow_id is deprecated: use Snapshot.run_id",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.run_id

    @property
    def is_terminal(self) -> bool:
        """True once the run is completed or failed."""
        return self.status in TERMINAL

    def due_at(self) -> int | None:
        """When the run next needs a step without outside help (epoch ms), or None.

        ``active`` runs are due now (0); a retry is due at ``nextRetryAt``; a sleep or an event
        timeout at ``wait.until``. A paused run with no deadline, and a finished run, are never
        due: only an event moves them. A run with branches is due when its first branch is.
        """
        if self.branches and not self.is_terminal:
            dues = [
                d for b in self.branches for d in [self.branch_view(b).due_at()] if d is not None
            ]
            return min(dues) if dues else None
        if self.status == "active":
            return 0
        if self.status == "error" and self.retry_state is not None:
            return self.retry_state.next_retry_at or 0
        if self.status == "paused" and self.wait is not None and self.wait.until is not None:
            return self.wait.until
        return None

    def branch_view(self, branch_id: str) -> Snapshot:
        """The run as branch ``branch_id`` sees it: its status, node, wait, retry and version.

        Raises:
            KeyError: the run has no such branch.
        """
        branch = (self.branches or {})[branch_id]
        status = branch.status if branch.status in ("active", "paused", "error") else "completed"
        return self.model_copy(
            update={
                "status": status,
                "current_node_id": branch.node_id,
                "version": branch.version,
                "wait": branch.wait,
                "retry_state": branch.retry_state,
                "joined": branch.joined,
                "branches": None,
                "step_version": None,
                "input_pending": None,
            }
        )

    def results(self, node_id: str) -> list[NodeResult]:
        """The results recorded for ``node_id`` (oldest first; possibly trimmed by retention)."""
        return self.context.get(node_id, [])

    def execution_count(self, node_id: str) -> int:
        """How many results ``node_id`` has produced, including any trimmed by retention."""
        if self.counts is not None and node_id in self.counts:
            return self.counts[node_id]
        return len(self.context.get(node_id, []))

    @property
    def last_step_version(self) -> int:
        """The version the last step (or the start) saved; events do not move it."""
        return self.version if self.step_version is None else self.step_version

    def next_event(self) -> int | None:
        """The index in ``inbox`` of the event the next step consumes, or None.

        Only a paused run consumes events: a plain pause takes any event; an event wait takes
        one with its name, or any when either side has none; a sleep takes none.
        """
        if self.status != "paused":
            return None
        wait = self.wait
        for i, event in enumerate(self.inbox or []):
            if wait is None:
                return i
            if wait.kind == "event" and (
                wait.event is None or event.name is None or event.name == wait.event
            ):
                return i
        return None

    @property
    def accepted_versions(self) -> tuple[int, ...]:
        """The versions a delivery may name to run this snapshot's next step."""
        if self.step_version is None or self.step_version == self.version:
            return (self.version,)
        return (self.version, self.step_version)

    def to_json(self) -> str:
        """This snapshot's JSON, proven to read back as the same snapshot.

        Every store writes this, so no run is ever saved in a form that cannot be loaded. The
        proof is that parsing the JSON again (the snapshot codec's parser, which stops at 200
        levels) and writing what it read gives the same bytes: nothing was lost (two keys that
        became one) and nothing non-standard was written (NaN, Infinity).

        The JSON is written in one pass. A small one (:data:`WHOLE_PROOF_BELOW`) is proven
        whole, and so is one with many new results (:data:`PROVEN_APART_AT_MOST`); otherwise
        the proof covers what is not already known to read back: the fields outside
        ``context``, and the results that were neither loaded from JSON nor proven by an
        earlier ``to_json`` of this snapshot or the one it was copied from (known by identity,
        so a result replaced or copied is proven again; results are values, never changed in
        place: the engine makes new ones). The whole JSON is proven
        whenever it holds the words NaN or Infinity.

        Raises:
            NotStrictJson: the snapshot holds something its JSON would not give back (a lone
                surrogate, NaN or Infinity, keys that collide, nesting past the parser's
                limit); ``rule`` is ``round_trip``.
        """
        try:
            raw = self.model_dump_json(by_alias=True)
        except PydanticSerializationError as exc:
            raise self._unreadable(str(exc)) from None
        proven = None
        if len(raw) >= WHOLE_PROOF_BELOW and "NaN" not in raw and "Infinity" not in raw:
            proven, exact = self._proven_results()
        if proven is None:
            back = _prove(raw, self._unreadable)
            self._proven = _Proven(_plain_results(self.context), raw, back)
        else:
            rest = {"context"}
            again = _prove(self.model_dump_json(by_alias=True, exclude=rest), self._unreadable)
            results_exact = exact
            exact = exact and again == self.model_dump(by_alias=True, exclude=rest)
            self._proven = _Proven(proven, raw, exact=exact, results_exact=results_exact)
        return raw

    def _decodes_as_itself(self, raw: str) -> bool:
        """Whether ``raw`` is what this snapshot's last ``to_json`` wrote and decoding it
        gives a snapshot equal to this one."""
        proven = self._proven
        if proven.raw is not raw:
            return False
        if proven.exact is None:
            proven.exact = proven.back == self.model_dump(by_alias=True)
            proven.results_exact = proven.exact
            proven.back = None
        return proven.exact

    def _proven_results(self) -> tuple[dict[str, list[NodeResult]] | None, bool]:
        """Prove the results not yet known to read back. Return, per node, the results known
        to read back as they are, or None when ``context`` is not what validation makes (then
        the whole JSON is proven); and whether every result reads back as an equal one."""
        known = self._proven.results
        done: dict[str, int] = {}
        for node_id, results in self.context.items():
            if type(node_id) is not str or type(results) is not list:
                return None, False
            done[node_id] = _known_prefix(results, known.get(node_id))
        unproven = sum(len(self.context[n]) - d for n, d in done.items())
        if unproven > PROVEN_APART_AT_MOST:
            return None, False  # one parse of the whole costs less
        proven: dict[str, list[NodeResult]] = {}
        # Known results decode as themselves when the holder says so; new ones are checked.
        exact = self._proven.results_exact or not any(done.values())
        for node_id, results in self.context.items():
            kept = results[: done[node_id]]
            for result in results[done[node_id] :]:
                if not isinstance(result, NodeResult):
                    return None, False
                # Proven where it sits: three levels down (snapshot, context, list).
                text = result.model_dump_json(by_alias=True)
                back = _prove(f'{{"c":{{"n":[{text}]}}}}', self._unreadable)
                if back["c"]["n"][0] != result.model_dump(by_alias=True):
                    exact = False  # it reads back, but not as itself (a tuple, a date...)
                    continue
                kept.append(result)
            proven[node_id] = kept
        return proven, exact

    def _unreadable(self, why: str) -> Exception:
        from .errors import NotStrictJson

        return NotStrictJson(
            f"the snapshot of run {self.run_id!r} would not read back: {why}", "round_trip"
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Snapshot:
        """Load a snapshot from its JSON text."""
        snapshot = cls.model_validate_json(raw)
        snapshot._proven = _Proven(_plain_results(snapshot.context), results_exact=True)
        return snapshot

    @classmethod
    def from_stored(cls, run_id: str, raw: Any, where: str = "the store") -> Snapshot:
        """Load a snapshot a store kept: :func:`decode_snapshot`."""
        return decode_snapshot(run_id, raw, where)


FINISH_HEADROOM_BYTES = 8192
"""Room a store keeps free in every unfinished run, so that failing or cancelling it fits."""


def encode_snapshot(snapshot: Snapshot, max_bytes: int | None, what: str | None = None) -> str:
    """The JSON a store writes for ``snapshot``: proven to read back, and within ``max_bytes``.

    A finished run may take all of ``max_bytes``; an unfinished one leaves
    :data:`FINISH_HEADROOM_BYTES` of it free (a quarter of it when ``max_bytes`` is small), so
    the snapshot that fails or cancels a run that was stored always fits.

    Raises:
        NotStrictJson: the snapshot would not read back (see :meth:`Snapshot.to_json`).
        PayloadTooLarge: it is over the limit that applies to it.
    """
    from .errors import PayloadTooLarge

    raw = snapshot.to_json()
    if max_bytes is not None:
        limit = max_bytes
        if not snapshot.is_terminal:
            limit -= min(FINISH_HEADROOM_BYTES, max_bytes // 4)
        size = len(raw.encode("utf-8"))
        if size > limit:
            label = what or f"the snapshot of run {snapshot.run_id!r}"
            if limit < max_bytes:
                label += f" (a run not finished keeps {max_bytes - limit} of {max_bytes} free)"
            raise PayloadTooLarge(label, size, limit)
    return raw


class WrittenSnapshots:
    """What a store last wrote for each run: the JSON text and the snapshot it holds.

    A store that finds exactly that text when it loads the run hands out (a copy of) the
    snapshot instead of decoding the text. Correct by construction: decoding is a function of
    the text, and a snapshot is remembered only when its ``to_json`` proved that decoding its
    text gives an equal snapshot (:meth:`wrote`). Any other text (another writer's save, a
    failed or partial write) is decoded as before. It needs no compare-and-set: equal text is
    the test, not a version number.

    Snapshots are values: the engine and the dispatcher derive new ones and never change one
    in place. So that callers cannot reach the remembered snapshot anyway, it is copied when
    remembered and when handed out, with containers of its own (``context`` and each result
    list, ``metadata``, ``counts``, ``inbox``, ``consumed_events``, ``branches``, ``joined``
    and ``input`` when a list or dict): adding, removing or replacing entries of a loaded
    snapshot never reaches the store. The results, events and values inside are shared, as
    between a snapshot and its ``model_copy``, and are not to be changed in place.

    Args:
        max_runs: how many runs to remember (the least recently written are forgotten).
        max_chars: how many characters of JSON the remembered snapshots may hold together
            (their objects take several times that in memory); a larger snapshot is not
            remembered.
    """

    def __init__(self, max_runs: int = 256, max_chars: int = 8 * 1024 * 1024) -> None:
        self._runs: dict[str, tuple[str, Snapshot]] = {}
        self._chars = 0
        self.max_runs = max_runs
        self.max_chars = max_chars

    def wrote(self, snapshot: Snapshot, raw: str) -> None:
        """Remember that the store now holds ``raw`` for the run, written from ``snapshot``
        (call it after the write succeeded, with the text it wrote)."""
        run_id = snapshot.run_id
        self.forget(run_id)
        if len(raw) > self.max_chars or not snapshot._decodes_as_itself(raw):
            return  # the next load decodes
        while self._runs and (
            len(self._runs) >= self.max_runs or self._chars + len(raw) > self.max_chars
        ):
            self.forget(next(iter(self._runs)))
        self._runs[run_id] = (raw, _detached(snapshot))
        self._chars += len(raw)

    def read(self, run_id: str, raw: Any) -> Snapshot | None:
        """A copy of the snapshot ``raw`` holds if it is the text last written, else None."""
        entry = self._runs.get(run_id)
        if entry is None or not (entry[0] is raw or entry[0] == raw):
            return None
        return _detached(entry[1])

    def forget(self, run_id: str) -> None:
        """Forget what was written for ``run_id``."""
        entry = self._runs.pop(run_id, None)
        if entry is not None:
            self._chars -= len(entry[0])


def _detached(snapshot: Snapshot) -> Snapshot:
    """A copy of ``snapshot`` with containers of its own (see :class:`WrittenSnapshots`)."""
    update: dict[str, Any] = {
        "context": {node: list(results) for node, results in snapshot.context.items()},
        "metadata": dict(snapshot.metadata),
    }
    for name in ("counts", "inbox", "consumed_events", "branches", "joined", "input"):
        value = getattr(snapshot, name)
        if isinstance(value, dict | list):
            update[name] = value.copy()
    return snapshot.model_copy(update=update)


def decode_snapshot(run_id: str, raw: Any, where: str = "the store") -> Snapshot:
    """The snapshot of ``run_id`` from what a store kept (JSON text or UTF-8 bytes).

    Raises:
        StoreError: (not transient) ``raw`` is not snapshot JSON. The error names what is
            wrong and where, never the stored content: it reaches HTTP answers and logs.
    """
    return _decode(Snapshot, raw, f"the stored snapshot of run {run_id!r}", where)


def decode_result(run_id: str, raw: Any, where: str = "the store") -> NodeResult:
    """An archived :class:`NodeResult` of ``run_id`` from what a store kept.

    Raises:
        StoreError: (not transient) ``raw`` is not a result's JSON; the error does not repeat
            the stored content.
    """
    return _decode(NodeResult, raw, f"an archived result of run {run_id!r}", where)


def _decode(model: type[M], raw: Any, what: str, where: str) -> M:
    from pydantic import ValidationError

    from .errors import StoreError

    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw).decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise StoreError(f"{where}: {what} is a {type(raw).__name__}, not JSON", transient=False)
    try:
        if model is Snapshot:
            return Snapshot.from_json(raw)  # type: ignore[return-value]
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        )
        raise StoreError(f"{where}: {what} is not valid ({problems})", transient=False) from exc


class DispatchMessage(WireModel):
    """ "Run the next step of run X": what a scheduler delivers to the dispatcher.

    ``version`` is the snapshot version the message was scheduled for: a message for any other
    version is a duplicate or stale. ``hop`` counts re-schedules of the same version (early
    arrivals and long delays reached in several hops), so that each has a distinct ``key``.
    """

    run_id: str
    version: int
    hop: int = 0
    branch: str | None = Field(default=None, exclude_if=_is_none, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The parallel branch to step (``version`` is then the branch's), or None for the run."""

    @property
    def key(self) -> str:
        """A deduplication key: the same for every schedule of the same delivery."""
        key = f"{self.run_id}.{self.version}.{self.hop}"
        return key if self.branch is None else f"{key}.b{self.branch}"
