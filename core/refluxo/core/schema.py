"""The HTTP API's request bodies as pydantic models, and the OpenAPI 3.1 document built from them.

:class:`~refluxo.core.http.HttpApi` validates every body with these models, and
:func:`openapi_document` describes the API from the same models, so the published schema and
the validation cannot drift apart. The models defer building their validators until first use
(``defer_build``): importing the core stays cheap for a cold start.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from .dispatcher import RUN_ID, WORKFLOW_NAME
from .http import _STATUSES, MAX_LIST_LIMIT
from .model import DispatchMessage, Snapshot, WorkflowDefinition

RUN_ID_PATTERN = RUN_ID.pattern
WORKFLOW_NAME_PATTERN = WORKFLOW_NAME.pattern


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class StartRun(_Body):
    """``POST /workflows/{name}/runs``: start a run.

    The document marks every body required: a server that refuses what is not
    ``application/json`` (the local one) needs a typed body, ``{}`` at least. The API itself
    reads an empty body as ``{}`` here and for :class:`CancelRun`.
    """

    id: StrictStr | None = Field(
        default=None,
        description="the run's id; starting the same id again starts nothing (200)",
        json_schema_extra={"pattern": RUN_ID_PATTERN},
    )
    input: Any = Field(default=None, description="the run's input, any JSON value")


class SendEvent(_Body):
    """``POST /runs/{id}/events``: deliver an event to a run."""

    payload: Any = Field(description="the event's data, any JSON value (null too)")
    name: StrictStr | None = Field(default=None, description="the event's name")
    id: StrictStr | None = Field(
        default=None, description="an id that makes retries of this event safe"
    )


class CancelRun(_Body):
    """``POST /runs/{id}/cancel``: fail a run that has not finished."""

    reason: StrictStr | None = Field(default=None, description="why, kept in the snapshot")


class RetryRun(_Body):
    """``POST /runs/{id}/retry``: continue a failed (or refused) run from the node that failed."""

    reason: StrictStr | None = Field(default=None, description="why, kept in metadata.retries")
    force: StrictBool = Field(default=False, description="retry a cancelled run too")


class RerunRun(_Body):
    """``POST /runs/{id}/rerun``: a new run from a node, with the source's results before it."""

    model_config = ConfigDict(extra="forbid", defer_build=True, populate_by_name=True)

    from_: StrictStr = Field(alias="from", description="the node the new run starts at")
    input: Any = Field(default=None, description="given to that node as a run's input")
    id: StrictStr | None = Field(
        default=None,
        description="the new run's id (default: a random one)",
        json_schema_extra={"pattern": RUN_ID_PATTERN},
    )


class ExportRun(_Body):
    """``POST /runs/{id}/export``: end the run here as ``moved``, and answer its snapshot."""

    to: StrictStr = Field(description="where the run goes (recorded as metadata.movedTo)")
    version: StrictInt = Field(description="the version the caller read: refused if it moved on")


class Exported(_Body):
    """The run as it was before it ended here: what ``POST /runs/import`` takes."""

    snapshot: Snapshot


class ImportRun(_Body):
    """``POST /runs/import``: continue here a run exported from another deployment."""

    model_config = ConfigDict(extra="forbid", defer_build=True, populate_by_name=True)

    snapshot: Snapshot = Field(description="the run's snapshot, as exported")
    from_: StrictStr | None = Field(
        default=None, alias="from", description="where it comes from (metadata.movedFrom)"
    )


class TimelineStep(_Body):
    node: str
    attempt: int
    at: int = Field(description="when the result was recorded, epoch ms")
    ok: bool
    output: Any = Field(default=None, description="the node's output (when ok)")
    error: str | None = Field(default=None, description="the error's full text (when not ok)")


class Timeline(_Body):
    """``GET /runs/{id}/timeline``: the run's steps, where it stands, its events and links."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    id: str
    workflow: str | None
    version: int
    startedAt: int | None
    timeInSteps: int | None = Field(description="milliseconds spent in steps")
    steps: list[TimelineStep]
    now: dict[str, Any] = Field(
        description="status, node, wait {kind, until, event}, retry {node, attempts, at}, "
        "failedReason, cancelled, refused {reason, at}"
    )
    events: dict[str, Any] = Field(description="received (not yet consumed), consumed (ids)")
    retries: list[dict[str, Any]] = Field(description="{at, by, reason, failedReason} each")
    reruns: list[dict[str, Any]] = Field(description="{run, from, at, by}: runs made from it")
    rerunOf: dict[str, Any] | None = Field(description="{run, from, at, by}: its source")
    movedTo: Any = None
    movedFrom: Any = None


class Reconcile(_Body):
    """``POST /_reconcile``: schedule again the runs whose delivery was lost."""

    graceMs: StrictInt | None = Field(  # the wire name
        default=None,
        ge=0,
        le=30 * 24 * 3600 * 1000,
        description="how long a run must have been due without a step (default five minutes)",
    )
    limit: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="the most runs to schedule in one call"
    )


class CronTick(_Body):
    """``POST /_cron``: start the run of one tick of a workflow's schedule."""

    workflow: StrictStr = Field(description="the workflow's name")
    schedule: StrictStr = Field(description="the schedule's name (see Workflow(schedules=...))")
    tick: StrictInt | None = Field(
        default=None,
        ge=0,
        description="the tick, epoch ms (default: Cloud Scheduler's X-CloudScheduler-ScheduleTime "
        "header, else the schedule's tick nearest to now)",
    )


class CronStarted(_Body):
    """The run a tick started (or had started already)."""

    runId: str
    created: bool
    tick: int


class Reconciled(_Body):
    """What ``/_reconcile`` scheduled."""

    scheduled: list[str]


class RunSummary(_Body):
    """A run's id, status and version (the answer of start, event and cancel)."""

    workflowId: str  # the wire name
    status: str
    version: int


class WorkflowInfo(_Body):
    """A workflow this deployment hosts."""

    name: str
    hash: str = Field(description="the shape hash runs record (nodes, types and edges)")
    start: str = Field(description="the node a run starts at")


class WorkflowList(_Body):
    """``GET /workflows``: the workflows this deployment hosts."""

    workflows: list[WorkflowInfo]


class WorkflowDetail(WorkflowInfo):
    """``GET /workflows/{name}``: a hosted workflow with its definition (nodes and edges)."""

    definition: WorkflowDefinition


class RunListItem(_Body):
    """One run in ``GET /runs``: a summary, never the snapshot. Times are epoch milliseconds."""

    id: str = Field(description="the run's id")
    workflow: str | None = Field(description="its workflow's name (null when not recorded)")
    status: str = Field(description="active, paused, error, completed or failed")
    currentNode: str | None = Field(description="the node the run is at")
    version: int
    createdAt: int | None = Field(description="when it was stored first (null when unknown)")
    updatedAt: int = Field(description="when it was last written")
    failedReason: str | None = Field(description="why a failed run failed, else null")


class RunList(_Body):
    """``GET /runs``: a page of runs, newest first, and the cursor of the next page."""

    runs: list[RunListItem]
    cursor: str | None = Field(
        description="pass as ?cursor= to get the next page; null on the last page"
    )


class DispatchOutcome(_Body):
    """What ``/_dispatch`` did with a message."""

    outcome: str
    runId: str  # the wire name
    version: int | None
    status: str | None


class ErrorDetail(_Body):
    code: str = Field(description="a stable, machine-readable code")
    message: str = Field(description="what went wrong, for people")


class ErrorBody(_Body):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class Health(_Body):
    ok: bool


def body_problems(exc: ValidationError) -> str:
    """A ValidationError as ``field: problem; ...`` (what a client needs to fix its body)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        kind = error["type"]
        if kind == "missing":
            problem = "missing"
        elif kind == "extra_forbidden":
            problem = "unknown field"
        elif kind in ("string_type", "string_pattern_mismatch"):
            problem = "must be a string"
        else:
            problem = str(error["msg"])
        problems.append(f"{where}: {problem}")
    return "; ".join(problems)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERRORS = {
    "400": "malformed JSON, fields or id, or a Host this server does not answer to",
    "401": "a credential is missing or wrong",
    "403": "the route is not enabled here",
    "404": "unknown route, workflow or run",
    "405": "another method is expected",
    "409": "the run has finished, the id is taken, or the run cannot be retried or rerun",
    "411": "a body without Content-Length",
    "413": "the body is over the limit",
    "415": "the body is not declared as application/json",
    "501": "the store cannot find due runs, or list runs",
    "503": "a transient backend failure or a busy run: try again",
}


def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _answers(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    responses = dict(ok)
    for status in errors:
        responses[status] = {
            "description": _ERRORS[status],
            "content": _json_content(_ref("ErrorBody")),
        }
    return responses


_CACHE: dict[str, Any] = {}


def openapi_document() -> dict[str, Any]:
    """The API as an OpenAPI 3.1 document (built once, then cached)."""
    if "doc" in _CACHE:
        return dict(_CACHE["doc"])
    template = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {}
    for model, mode in (
        (StartRun, "validation"),
        (SendEvent, "validation"),
        (CancelRun, "validation"),
        (DispatchMessage, "validation"),
        (Reconcile, "validation"),
        (RetryRun, "validation"),
        (RerunRun, "validation"),
        (Timeline, "serialization"),
        (ExportRun, "validation"),
        (Exported, "serialization"),
        (ImportRun, "validation"),
        (Reconciled, "serialization"),
        (CronTick, "validation"),
        (CronStarted, "serialization"),
        (RunSummary, "serialization"),
        (RunListItem, "serialization"),
        (WorkflowList, "serialization"),
        (WorkflowDetail, "serialization"),
        (RunList, "serialization"),
        (DispatchOutcome, "serialization"),
        (ErrorBody, "serialization"),
        (Health, "serialization"),
        (Snapshot, "serialization"),
    ):
        schema = model.model_json_schema(
            by_alias=True,
            ref_template=template,
            mode=mode,  # type: ignore[arg-type]
        )
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    run_id = {
        "name": "run_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
    }
    workflow = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": WORKFLOW_NAME_PATTERN},
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}, {}]
    common = ("400", "401", "405", "413", "415", "503")
    summary_ok = {"content": _json_content(_ref("RunSummary"))}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "refluxo",
            "version": "1",
            "description": "Start runs, send them events, cancel and read them.",
        },
        "paths": {
            "/workflows": {
                "get": {
                    "operationId": "listWorkflows",
                    "security": bearer,
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the hosted workflows",
                                "content": _json_content(_ref("WorkflowList")),
                            }
                        },
                        "400",
                        "401",
                        "405",
                    ),
                }
            },
            "/workflows/{name}": {
                "get": {
                    "operationId": "getWorkflow",
                    "parameters": [workflow],
                    "security": bearer,
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the workflow and its definition",
                                "content": _json_content(_ref("WorkflowDetail")),
                            }
                        },
                        "400",
                        "401",
                        "404",
                        "405",
                    ),
                }
            },
            "/workflows/{name}/runs": {
                "post": {
                    "operationId": "startRun",
                    "parameters": [workflow],
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("StartRun"))},
                    "responses": _answers(
                        {
                            "201": {"description": "a new run", **summary_ok},
                            "200": {"description": "the run with this id exists", **summary_ok},
                        },
                        *common,
                        "404",
                        "409",
                    ),
                }
            },
            "/runs": {
                "get": {
                    "operationId": "listRuns",
                    "description": "runs newest first (last written), one page at a time",
                    "parameters": [
                        _param("workflow", "only runs of this workflow", {"type": "string"}),
                        _param(
                            "status",
                            "only runs with this status",
                            {"type": "string", "enum": list(_STATUSES)},
                        ),
                        _param(
                            "updated_before",
                            "only runs last written before this time (epoch ms or ISO 8601)",
                            {"type": "string"},
                        ),
                        _param(
                            "updated_after",
                            "only runs last written at or after this time (epoch ms or ISO 8601)",
                            {"type": "string"},
                        ),
                        _param(
                            "limit",
                            "the most runs on the page (default 50)",
                            {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
                        ),
                        _param(
                            "cursor", "the cursor of the previous page's answer", {"type": "string"}
                        ),
                    ],
                    "security": bearer,
                    "responses": _answers(
                        {
                            "200": {
                                "description": "a page of runs",
                                "content": _json_content(_ref("RunList")),
                            }
                        },
                        "400",
                        "401",
                        "405",
                        "501",
                        "503",
                    ),
                }
            },
            "/runs/{run_id}": {
                "get": {
                    "operationId": "getRun",
                    "parameters": [run_id],
                    "security": bearer,
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the run's snapshot",
                                "content": _json_content(_ref("Snapshot")),
                            }
                        },
                        "400",
                        "401",
                        "404",
                        "405",
                        "503",
                    ),
                }
            },
            "/runs/{run_id}/events": {
                "post": {
                    "operationId": "sendEvent",
                    "parameters": [run_id],
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("SendEvent"))},
                    "responses": _answers(
                        {"202": {"description": "the event is in the run's inbox", **summary_ok}},
                        *common,
                        "404",
                        "409",
                    ),
                }
            },
            "/runs/{run_id}/cancel": {
                "post": {
                    "operationId": "cancelRun",
                    "parameters": [run_id],
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("CancelRun"))},
                    "responses": _answers(
                        {"200": {"description": "the run is failed", **summary_ok}},
                        *common,
                        "404",
                        "409",
                    ),
                }
            },
            "/runs/{run_id}/retry": {
                "post": {
                    "operationId": "retryRun",
                    "description": "continue a failed run from the node that failed, attempts "
                    "reset; a run refused for its definition is delivered again. The caller's "
                    "X-Refluxo-Caller header, if any, is recorded as who retried.",
                    "parameters": [run_id],
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("RetryRun"))},
                    "responses": _answers(
                        {"200": {"description": "the run continues", **summary_ok}},
                        *common,
                        "404",
                        "409",
                    ),
                }
            },
            "/runs/{run_id}/rerun": {
                "post": {
                    "operationId": "rerunRun",
                    "description": "start a new run at a node with this run's results before "
                    "it; both runs' metadata link them, this run's state is unchanged",
                    "parameters": [run_id],
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("RerunRun"))},
                    "responses": _answers(
                        {"201": {"description": "the new run", **summary_ok}},
                        *common,
                        "404",
                        "409",
                    ),
                }
            },
            "/runs/{run_id}/export": {
                "post": {
                    "operationId": "exportRun",
                    "description": "end the run here (failed, reason 'moved', metadata.movedTo) "
                    "if it is still at the version given, and answer its snapshot as it was",
                    "parameters": [run_id],
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("ExportRun"))},
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the snapshot to import elsewhere",
                                "content": _json_content(_ref("Exported")),
                            }
                        },
                        *common,
                        "404",
                        "409",
                    ),
                }
            },
            "/runs/import": {
                "post": {
                    "operationId": "importRun",
                    "description": "continue here a run exported from another deployment: "
                    "409 when this deployment does not host its workflow with the same shape "
                    "hash, or the id is taken",
                    "security": bearer,
                    "requestBody": {"required": True, "content": _json_content(_ref("ImportRun"))},
                    "responses": _answers(
                        {"201": {"description": "the run continues here", **summary_ok}},
                        *common,
                        "409",
                    ),
                }
            },
            "/runs/{run_id}/timeline": {
                "get": {
                    "operationId": "runTimeline",
                    "parameters": [run_id],
                    "security": bearer,
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the run's timeline",
                                "content": _json_content(_ref("Timeline")),
                            }
                        },
                        "400",
                        "401",
                        "404",
                        "405",
                        "503",
                    ),
                }
            },
            "/_dispatch": {
                "post": {
                    "operationId": "dispatch",
                    "description": "the scheduler's route: run the next step of a run",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": _json_content(_ref("DispatchMessage")),
                    },
                    "responses": _answers(
                        {
                            "200": {
                                "description": "what the dispatcher did",
                                "content": _json_content(_ref("DispatchOutcome")),
                            }
                        },
                        *common,
                        "403",
                    ),
                }
            },
            "/_reconcile": {
                "post": {
                    "operationId": "reconcile",
                    "description": "the platform timer's route: schedule again the runs whose "
                    "delivery was lost",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": _json_content(_ref("Reconcile"))},
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the runs scheduled again",
                                "content": _json_content(_ref("Reconciled")),
                            }
                        },
                        *common,
                        "403",
                        "501",
                    ),
                }
            },
            "/_cron": {
                "post": {
                    "operationId": "cronTick",
                    "description": "the platform timer's route: start the run of a schedule's "
                    "tick (once per tick)",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": _json_content(_ref("CronTick"))},
                    "responses": _answers(
                        {
                            "200": {
                                "description": "the tick's run",
                                "content": _json_content(_ref("CronStarted")),
                            }
                        },
                        *common,
                        "403",
                        "404",
                    ),
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "responses": _answers(
                        {"200": {"description": "up", "content": _json_content(_ref("Health"))}},
                        "400",
                        "405",
                    ),
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    _CACHE["doc"] = document
    return dict(document)
