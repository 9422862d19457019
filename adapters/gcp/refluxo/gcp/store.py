"""The :class:`StateStore` on Cloud Firestore: one document per run.

Document layout (collection ``refluxo_runs`` by default, document id = run id)::

    status     string      the snapshot's status                      (queryable)
    version    integer     the snapshot's version: the locking field  (queryable)
    workflow   string|null snapshot.definition.name                   (queryable)
    updatedAt  timestamp   server time of the last write              (queryable)
    dueAt      integer|null when the run is due, epoch ms (None: not due)  (queryable)
    updatedMs  integer     the last write, epoch ms by this process's clock (the list order)
    createdMs  integer     the first write, epoch ms (set by ``create`` only)
    node       string|null snapshot.currentNodeId (listed, not queried)
    failedReason string|null why a failed run failed (listed, not queried)
    snapshot   string      the whole snapshot as JSON text

``find_runs`` (``GET /runs``) orders by ``updatedMs`` descending, then by document name; with
equality filters on ``workflow`` and/or ``status`` it needs the composite indexes that
``deploy/gcp/firestore.indexes.json`` declares (the deploy script creates them). Runs stored
before ``updatedMs`` existed are not listed until their next write.

``dueAt`` is :func:`~refluxo.core.ports.stored_due_time` (an active run: the time of its last
write, by this process's clock), so the reconciler finds runs whose delivery was lost with a
range query on Firestore's automatic single-field index.

The snapshot is kept as JSON text rather than a Firestore map: maps cannot hold arrays of
arrays, limit nesting depth and do not keep every JSON number exactly, so text is the lossless
choice. Deployments should exempt ``snapshot`` from single-field indexing (it is never queried,
and indexing a large string costs write throughput).

The document id is the run id itself, except for ids Firestore forbids or reserves (``.``,
``..``, ``__*__``, anything with ``/``) and ids that begin with ``~``: those are stored under
``~`` + the percent-encoded id. Plain ids never begin with ``~``, so the mapping stays one to one
(the dispatcher's run ids, ``[A-Za-z0-9][A-Za-z0-9._:-]{0,127}``, are always stored verbatim).
Only the empty id and ids whose document id would pass Firestore's 1500-byte limit are refused.

``save`` is a compare-and-set without a transaction: it reads ``version`` and the document's
``update_time``, then writes with an ``update_time`` precondition, which Firestore checks
atomically on commit. A read-write transaction would work too, but Firestore transactions
lock: concurrent savers wait on each other's locks and can all abort (in the emulator each
round costs a two-second lock timeout, and sixteen racers with three attempts each were seen to
end with no winner). With a precondition the first commit wins and the others fail at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import AsyncRetry, if_transient_error
from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from refluxo.core.errors import PayloadTooLarge, RunNotFound, VersionConflict
from refluxo.core.model import (
    NodeResult,
    Snapshot,
    Status,
    WrittenSnapshots,
    decode_result,
    decode_snapshot,
    encode_snapshot,
    now_ms,
)
from refluxo.core.ports import (
    DueRuns,
    ResultArchive,
    RunIndex,
    RunInfo,
    StateStore,
    stored_due_time,
)

from ._errors import BACKEND_ERRORS, store_error

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FIRESTORE_MAX_DOCUMENT_BYTES",
    "FirestoreStateStore",
    "document_id",
    "document_size",
    "run_id_of",
]

FIRESTORE_MAX_DOCUMENT_BYTES = 1_048_576
"""Firestore's limit on a document's size, computed as :func:`document_size` does."""

DEFAULT_MAX_BYTES = FIRESTORE_MAX_DOCUMENT_BYTES - 4096
"""The default limit on a snapshot's JSON: Firestore's limit less room for the other fields
and the document's name (a few hundred bytes; the exact document size is checked as well)."""

_RESERVED_ID = re.compile(r"\.|\.\.|__.*__", re.DOTALL)
_ESCAPE = "~"
_MAX_ID_BYTES = 1500

_STATUS, _VERSION, _WORKFLOW, _UPDATED_AT, _DUE_AT, _SNAPSHOT = (
    "status",
    "version",
    "workflow",
    "updatedAt",
    "dueAt",
    "snapshot",
)
_UPDATED_MS, _CREATED_MS, _NODE, _FAILED_REASON = "updatedMs", "createdMs", "node", "failedReason"
_LISTED = [_WORKFLOW, _STATUS, _NODE, _VERSION, _CREATED_MS, _UPDATED_MS, _FAILED_REASON]
_NAME_ONLY = ["__name__"]  # a projection that returns document names, never the snapshots


def document_id(run_id: str) -> str | None:
    """The document id that holds ``run_id``, or None when no document id can hold it."""
    if not run_id:
        return None
    doc_id = run_id
    if "/" in run_id or run_id.startswith(_ESCAPE) or _RESERVED_ID.fullmatch(run_id):
        doc_id = _ESCAPE + urllib.parse.quote(run_id, safe="")
    try:
        size = len(doc_id.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return None
    return doc_id if size <= _MAX_ID_BYTES else None


def run_id_of(doc_id: str) -> str:
    """The run id stored under document id ``doc_id`` (the inverse of :func:`document_id`)."""
    if doc_id.startswith(_ESCAPE):
        return urllib.parse.unquote(doc_id[len(_ESCAPE) :])
    return doc_id


def _value_size(value: Any) -> int:
    # https://firebase.google.com/docs/firestore/storage-size
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, int | float | dt.datetime):
        return 8
    if value is firestore.SERVER_TIMESTAMP:
        return 8  # stored as a timestamp
    if isinstance(value, str):
        return len(value.encode("utf-8")) + 1
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, Mapping):
        return sum(len(str(k).encode("utf-8")) + 1 + _value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_value_size(v) for v in value)
    raise TypeError(f"no Firestore size rule for {type(value).__name__}")


def document_size(path: str, fields: Mapping[str, Any]) -> int:
    """The size Firestore counts for a document at ``path`` (``collection/id[/...]``).

    Per Firestore's storage-size rules: the name is the sum of its path segments (UTF-8 bytes
    + 1 each) + 16; each field is its name (UTF-8 bytes + 1) plus its value (strings UTF-8
    bytes + 1; integers, doubles and timestamps 8; null and booleans 1; maps and arrays the sum
    of their contents); the document adds 32.
    """
    name = sum(len(segment.encode("utf-8")) + 1 for segment in path.split("/")) + 16
    return name + _value_size(dict(fields)) + 32


_REMEMBERED_RUNS = 4096


class FirestoreStateStore(StateStore, ResultArchive, DueRuns, RunIndex):
    """Keeps each run in one Firestore document; see the module docstring for the layout.

    Args:
        client: a ready ``firestore.AsyncClient`` (the emulator's, when testing).
        collection: the collection path that holds the runs (a subcollection path works too).
        max_bytes: refuse snapshots whose JSON is larger than this many bytes. The whole
            document must also fit Firestore's 1 MiB limit, which is checked exactly.
        deadline_s: how long one call keeps retrying transient failures before it gives up
            with a transient StoreError (the client's own default is 300 s: a Firestore
            outage would hold every request that long instead of answering 503).
        timeout_s: the limit on each attempt.
        clock: epoch milliseconds, for ``dueAt`` of active runs.

    ``create`` raises ValueError for a run id no document id can hold (empty, or too long);
    ``load`` and ``save`` answer RunNotFound for one, since no such run can exist.

    Raises:
        ValueError: ``max_bytes`` is not between 1 and Firestore's document limit.
    """

    def __init__(
        self,
        client: firestore.AsyncClient,
        collection: str = "refluxo_runs",
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        deadline_s: float = 15.0,
        timeout_s: float = 10.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if not 0 < max_bytes <= FIRESTORE_MAX_DOCUMENT_BYTES:
            raise ValueError(
                f"max_bytes must be between 1 and {FIRESTORE_MAX_DOCUMENT_BYTES}, got {max_bytes}"
            )
        self._client = client
        self._collection = client.collection(collection)
        retry = AsyncRetry(
            initial=0.1,
            maximum=2.0,
            multiplier=2.0,
            timeout=deadline_s,
            predicate=if_transient_error,
        )
        self._call: dict[str, Any] = {"retry": retry, "timeout": timeout_s}
        self._seen: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._written = WrittenSnapshots()
        self.collection = collection
        self.max_bytes = max_bytes
        self.clock = clock

    # --- the port --------------------------------------------------------------------------

    async def create(self, snapshot: Snapshot) -> bool:
        doc_id = document_id(snapshot.run_id)
        if doc_id is None:
            raise ValueError(
                f"cannot store run id {snapshot.run_id!r}: a run id must be non-empty "
                f"and at most {_MAX_ID_BYTES} bytes of UTF-8 (encoded)"
            )
        ref = self._collection.document(doc_id)
        fields = self._fields(snapshot, ref.path, created=True)
        try:
            await ref.create(fields, **self._call)
        except BACKEND_ERRORS as exc:
            # Not every Conflict: ABORTED is one too, and means "try again", not "exists".
            if isinstance(exc, gexc.AlreadyExists) or type(exc) is gexc.Conflict:
                return False
            raise store_error(exc, f"create run {snapshot.run_id!r}") from exc
        self._written.wrote(snapshot, fields[_SNAPSHOT])
        return True

    async def load(self, run_id: str) -> Snapshot:
        doc_id = document_id(run_id)
        if doc_id is None:
            raise RunNotFound(run_id)  # no run can have this id
        try:
            doc = await self._collection.document(doc_id).get(**self._call)
        except BACKEND_ERRORS as exc:
            raise store_error(exc, f"load run {run_id!r}") from exc
        if not doc.exists:
            raise RunNotFound(run_id)
        # The text this store wrote last is not decoded again (WrittenSnapshots).
        known = self._written.read(run_id, (doc.to_dict() or {}).get(_SNAPSHOT))
        snapshot = known if known is not None else _parse(run_id, doc)
        self._remember(run_id, snapshot.version, doc.update_time)
        return snapshot

    def _remember(self, run_id: str, version: int, update_time: Any) -> None:
        # The update time seen with a version is the precondition a save of that version
        # needs: the usual load-then-save of a step then costs no extra read.
        self._seen[run_id] = (version, update_time)
        self._seen.move_to_end(run_id)
        if len(self._seen) > _REMEMBERED_RUNS:
            self._seen.popitem(last=False)

    async def save(self, snapshot: Snapshot, *, expected_version: int) -> None:
        run_id = snapshot.run_id
        doc_id = document_id(run_id)
        if doc_id is None:
            raise RunNotFound(run_id)
        ref = self._collection.document(doc_id)
        fields = self._fields(snapshot, ref.path)
        seen = self._seen.get(run_id)
        if seen is not None and seen[0] == expected_version:
            update_time = seen[1]
        else:
            try:
                before = await ref.get([_VERSION], **self._call)
            except BACKEND_ERRORS as exc:
                raise store_error(exc, f"read run {run_id!r} before saving it") from exc
            if not before.exists:
                raise RunNotFound(run_id)
            stored = _version(before)
            if stored != expected_version:
                raise VersionConflict(run_id, expected_version, stored)
            update_time = before.update_time
        try:
            result = await ref.update(
                fields,
                option=self._client.write_option(last_update_time=update_time),
                **self._call,
            )
        except (gexc.FailedPrecondition, gexc.NotFound) as exc:
            # Written (or deleted) since that version was read, or another precondition failed.
            self._seen.pop(run_id, None)
            await self._explain_lost_write(run_id, expected_version, doc_id, update_time, exc)
        except BACKEND_ERRORS as exc:
            self._seen.pop(run_id, None)
            raise store_error(exc, f"save run {run_id!r}") from exc
        self._written.wrote(snapshot, fields[_SNAPSHOT])
        self._remember(run_id, snapshot.version, result.update_time)

    # --- the optional archive of trimmed results ----------------------------------------

    def _results(self, run_id: str) -> Any:
        doc_id = document_id(run_id)
        if doc_id is None:
            raise RunNotFound(run_id)
        return self._collection.document(doc_id).collection("results")

    async def archive_results(
        self, run_id: str, node_id: str, first_index: int, results: Sequence[NodeResult]
    ) -> None:
        """Keep trimmed results in the run's ``results`` subcollection, one document each.

        Document ids are ``<sha of the node id>-<index>``, written with ``create``: an index
        kept already is left as it is. One batch does them all; when it finds one that
        exists (a racer archived it first), each is created on its own.
        """
        results_ref = self._results(run_id)
        node_key = hashlib.sha256(node_id.encode()).hexdigest()[:16]
        docs = [
            (
                results_ref.document(f"{node_key}-{first_index + offset:012d}"),
                {"node": node_id, "index": first_index + offset, "result": result.to_json()},
            )
            for offset, result in enumerate(results)
        ]
        batch = self._client.batch()
        for ref, data in docs:
            batch.create(ref, data)
        try:
            try:
                await batch.commit(**self._call)
            except (gexc.AlreadyExists, gexc.Conflict) as exc:
                if not isinstance(exc, gexc.AlreadyExists) and type(exc) is not gexc.Conflict:
                    raise
                for ref, data in docs:
                    try:
                        await ref.create(data, **self._call)
                    except gexc.AlreadyExists:
                        pass
                    except gexc.Conflict as again:
                        if type(again) is not gexc.Conflict:
                            raise
        except BACKEND_ERRORS as exc:
            raise store_error(exc, f"archive results of run {run_id!r}") from exc

    async def archived_results(self, run_id: str, node_id: str) -> list[NodeResult]:
        """Every archived result of ``node_id``, oldest first (an equality query: no index)."""
        try:
            docs = [
                doc.to_dict() or {}
                async for doc in self._results(run_id)
                .where(filter=firestore.FieldFilter("node", "==", node_id))
                .stream(**self._call)
            ]
        except BACKEND_ERRORS as exc:
            raise store_error(exc, f"read archived results of run {run_id!r}") from exc
        docs.sort(key=lambda d: int(d["index"]))
        where = f"the archive of run {run_id!r} in Firestore"
        return [decode_result(run_id, d.get("result"), where) for d in docs]

    # --- beyond the port -------------------------------------------------------------------

    async def find_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        updated_before: int | None = None,
        updated_after: int | None = None,
        after: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> list[RunInfo]:
        """Runs newest first (see :class:`~refluxo.core.ports.RunIndex`), read with a
        projection that leaves the snapshots out.

        Raises:
            StoreError: the backend failed (FailedPrecondition names a missing index).
        """
        query: Any = self._collection
        if workflow is not None:
            query = query.where(filter=firestore.FieldFilter(_WORKFLOW, "==", workflow))
        if status is not None:
            query = query.where(filter=firestore.FieldFilter(_STATUS, "==", status))
        if updated_before is not None:
            query = query.where(filter=firestore.FieldFilter(_UPDATED_MS, "<", updated_before))
        if updated_after is not None:
            query = query.where(filter=firestore.FieldFilter(_UPDATED_MS, ">=", updated_after))
        query = query.order_by(_UPDATED_MS, direction=firestore.Query.DESCENDING).order_by(
            "__name__", direction=firestore.Query.ASCENDING
        )
        if after is not None:
            doc_id = document_id(after[1])
            if doc_id is None:
                return []
            query = query.start_after(
                {_UPDATED_MS: after[0], "__name__": self._collection.document(doc_id)}
            )
        query = query.select(_LISTED).limit(limit)
        try:
            docs = [doc async for doc in query.stream(**self._call)]
        except BACKEND_ERRORS as exc:
            raise store_error(exc, "find runs") from exc
        found = []
        for doc in docs:
            fields = doc.to_dict() or {}
            found.append(
                RunInfo(
                    run_id=run_id_of(doc.id),
                    workflow=fields.get(_WORKFLOW),
                    status=str(fields.get(_STATUS)),
                    current_node=fields.get(_NODE),
                    version=int(fields.get(_VERSION) or 0),
                    created_at=fields.get(_CREATED_MS),
                    updated_at=int(fields.get(_UPDATED_MS) or 0),
                    failed_reason=fields.get(_FAILED_REASON),
                )
            )
        return found

    async def list_runs(
        self,
        *,
        status: Status | None = None,
        workflow: str | None = None,
        limit: int = 100,
    ) -> list[str]:
        """The ids of up to ``limit`` runs with the given status and/or workflow name.

        Runs come in document-id order. Equality filters on ``status`` and ``workflow`` are
        served by Firestore's automatic single-field indexes; no composite index is needed.

        Raises:
            StoreError: the backend failed.
        """
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        query: Any = self._collection
        if status is not None:
            query = query.where(filter=firestore.FieldFilter(_STATUS, "==", status))
        if workflow is not None:
            query = query.where(filter=firestore.FieldFilter(_WORKFLOW, "==", workflow))
        # Document names only, not the (large) snapshots. Said explicitly rather than as
        # select([]), which some client versions send as no projection at all.
        query = query.select(_NAME_ONLY).limit(limit)
        try:
            return [run_id_of(doc.id) async for doc in query.stream(**self._call)]
        except BACKEND_ERRORS as exc:
            raise store_error(exc, "list runs") from exc

    async def due_runs(self, *, due_before: int, limit: int) -> list[str]:
        """Ids of unfinished runs due at or before ``due_before``, earliest first (see
        :class:`~refluxo.core.ports.DueRuns`): a range query on ``dueAt``'s automatic
        single-field index, fetching document names only.

        Raises:
            StoreError: the backend failed.
        """
        query = (
            self._collection.where(filter=firestore.FieldFilter(_DUE_AT, "<=", due_before))
            .order_by(_DUE_AT)
            .select(_NAME_ONLY)
            .limit(limit)
        )
        try:
            return [run_id_of(doc.id) async for doc in query.stream(**self._call)]
        except BACKEND_ERRORS as exc:
            raise store_error(exc, "find due runs") from exc

    def stored_size(self, snapshot: Snapshot) -> int:
        """The size Firestore will count for ``snapshot``'s document (see :func:`document_size`).

        Raises:
            ValueError: no document id can hold the snapshot's run id.
        """
        doc_id = document_id(snapshot.run_id)
        if doc_id is None:
            raise ValueError(f"cannot store run id {snapshot.run_id!r}")
        raw = snapshot.to_json()
        now = self.clock()
        fields = {**_layout(snapshot, raw, now), _CREATED_MS: now}
        return document_size(self._collection.document(doc_id).path, fields)

    # --- internals -------------------------------------------------------------------------

    def _fields(self, snapshot: Snapshot, path: str, *, created: bool = False) -> dict[str, Any]:
        """The document's fields; raises PayloadTooLarge before anything is written."""
        raw = encode_snapshot(snapshot, self.max_bytes)
        now = self.clock()
        fields = _layout(snapshot, raw, now)
        # The document keeps createdMs from its create on: a save's size counts it too.
        doc_size = document_size(path, {**fields, _CREATED_MS: now})
        if created:
            fields[_CREATED_MS] = now
        if doc_size > FIRESTORE_MAX_DOCUMENT_BYTES:
            raise PayloadTooLarge(
                f"Firestore document of run {snapshot.run_id!r}",
                doc_size,
                FIRESTORE_MAX_DOCUMENT_BYTES,
            )
        return fields

    async def _explain_lost_write(
        self,
        run_id: str,
        expected: int,
        doc_id: str,
        update_time: Any,
        exc: Exception,
    ) -> None:
        """Raise what a refused conditional write means, judging by the document now."""
        try:
            after = await self._collection.document(doc_id).get([_VERSION], **self._call)
        except BACKEND_ERRORS as reread:
            raise store_error(reread, f"re-read run {run_id!r} after a refused save") from exc
        if not after.exists:
            raise RunNotFound(run_id) from exc
        if after.update_time != update_time:
            # Another writer got in between our read and our write: it won.
            raise VersionConflict(run_id, expected, _version(after)) from exc
        raise store_error(exc, f"save run {run_id!r}") from exc


def _layout(snapshot: Snapshot, raw: str, now: int) -> dict[str, Any]:
    reason = snapshot.metadata.get("failedReason") if snapshot.status == "failed" else None
    return {
        _STATUS: snapshot.status,
        _VERSION: snapshot.version,
        _WORKFLOW: snapshot.definition.name if snapshot.definition is not None else None,
        _UPDATED_AT: firestore.SERVER_TIMESTAMP,
        _DUE_AT: stored_due_time(snapshot, now),
        _UPDATED_MS: now,
        _NODE: snapshot.current_node_id,
        _FAILED_REASON: reason if isinstance(reason, str) else None,
        _SNAPSHOT: raw,
    }


def _version(doc: DocumentSnapshot[AsyncDocumentReference]) -> int | None:
    value = (doc.to_dict() or {}).get(_VERSION)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse(run_id: str, doc: DocumentSnapshot[AsyncDocumentReference]) -> Snapshot:
    raw = (doc.to_dict() or {}).get(_SNAPSHOT)
    return decode_snapshot(run_id, raw, f"document {doc.reference.path!r}")
