"""Scheduled starts: a workflow's ``schedules`` start a run at each tick of a cron expression.

Each tick's run has an id made of the workflow, the schedule and the tick time
(:func:`tick_run_id`), and starting a run whose id exists starts nothing: a tick delivered
twice (a retried Cloud Scheduler call, two Worker invocations, two processes) starts one run.

Who notices a tick depends on the runtime: the embedded runtime's timer (which remembers the
last tick of each schedule in its SQLite file, so ticks missed while it was down are started
when it comes back, unless ``catch_up=False``), Cloud Scheduler calling ``/_cron``, or the
Worker's cron triggers. They all end in :meth:`~refluxo.core.dispatcher.Dispatcher.fire_tick`.

Cron expressions are evaluated by ``cronsim`` (pure Python, no dependencies, runs on Pyodide),
imported when a workflow with schedules is built: the core itself imports only the standard
library and pydantic, and a deployment without schedules does not need it
(``pip install refluxo[cron]``; the adapters' extras include it). Time zones come from
:mod:`zoneinfo` (the ``tzdata`` package supplies the database where the system has none, as on
Pyodide).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .codec import strict_json
from .errors import DefinitionError, NotStrictJson

SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
"""What a schedule name may be, matched whole."""

MAX_CATCH_UP = 24
"""At most this many missed ticks of one schedule (the newest) are started on coming back."""

ON_TIME_MS = 120_000
"""With ``catch_up=False``, a tick noticed at most this late is still started (not missed)."""


@dataclass(frozen=True)
class Schedule:
    """Start a run of the workflow at every tick of ``cron`` in ``timezone``.

    Args:
        cron: a five-field cron expression (minute hour day-of-month month day-of-week), as
            ``cronsim`` reads it (``L``, ``#`` and ``W`` included).
        timezone: an IANA time zone name; ticks follow its daylight-saving changes.
        input: the input of every run it starts (strict JSON).
        catch_up: start the ticks missed while nothing was watching (the embedded runtime was
            down) when it comes back, at most :data:`MAX_CATCH_UP` of them; False skips them.
        name: names the schedule in run ids and routes; defaults to ``cron``, ``cron1``, ...
            by position. Name schedules whose order may change, so a redeploy keeps their ids.
    """

    cron: str
    timezone: str = "UTC"
    input: Any = None
    catch_up: bool = True
    name: str | None = None

    def check(self) -> None:
        """Raise DefinitionError when the cron, time zone, input or name is not valid."""
        if self.name is not None and not SCHEDULE_NAME.fullmatch(self.name):
            raise DefinitionError(f"invalid schedule name {self.name!r}: letters, digits, '_', '-'")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise DefinitionError(f"schedule {self.cron!r}: unknown time zone {exc}") from exc
        _iterate(self.cron, datetime.now(zone))
        try:
            strict_json(self.input, what="the schedule's input")
        except NotStrictJson as exc:
            raise DefinitionError(f"schedule {self.cron!r}: {exc}") from exc


def _iterate(cron: str, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
    try:
        from cronsim import CronSim, CronSimError
    except ImportError as exc:  # pragma: no cover - the adapters' extras install it
        raise DefinitionError(
            "schedules need the cronsim package: pip install 'refluxo[cron]'"
        ) from exc
    try:
        return iter(CronSim(cron, start, reverse=reverse))
    except CronSimError as exc:
        raise DefinitionError(f"invalid cron expression {cron!r}: {exc}") from exc


def _to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def ticks_between(
    schedule: Schedule, after_ms: int, until_ms: int, *, newest: int | None = None
) -> list[int]:
    """The ticks (epoch ms) of ``schedule`` in ``(after_ms, until_ms]``, oldest first; with
    ``newest``, only that many of the latest (found walking back from ``until_ms``)."""
    zone = ZoneInfo(schedule.timezone)
    ticks: list[int] = []
    if newest is not None:
        start = datetime.fromtimestamp((until_ms + 1) / 1000, UTC).astimezone(zone)
        for moment in _iterate(schedule.cron, start, reverse=True):
            tick = _to_ms(moment)
            if tick <= after_ms or len(ticks) >= newest:
                break
            ticks.append(tick)
        return ticks[::-1]
    start = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(zone)
    for moment in _iterate(schedule.cron, start):
        tick = _to_ms(moment)
        if tick > until_ms:
            break
        if tick > after_ms:
            ticks.append(tick)
    return ticks


def last_tick(schedule: Schedule, at_ms: int) -> int | None:
    """The newest tick of ``schedule`` at or before ``at_ms`` (None if it has none)."""
    zone = ZoneInfo(schedule.timezone)
    # Reverse iteration starts strictly before its start: start one millisecond later.
    start = datetime.fromtimestamp((at_ms + 1) / 1000, UTC).astimezone(zone)
    for moment in _iterate(schedule.cron, start, reverse=True):
        return _to_ms(moment)
    return None


def next_tick(schedule: Schedule, after_ms: int) -> int | None:
    """The first tick of ``schedule`` after ``after_ms`` (None if it has none)."""
    zone = ZoneInfo(schedule.timezone)
    start = datetime.fromtimestamp(after_ms / 1000, UTC).astimezone(zone)
    for moment in _iterate(schedule.cron, start):
        tick = _to_ms(moment)
        if tick > after_ms:
            return tick
    return None


def nearest_tick(schedule: Schedule, at_ms: int) -> int | None:
    """The tick of ``schedule`` closest to ``at_ms``: what a trigger a little early or late
    at ``at_ms`` stands for."""
    before = last_tick(schedule, at_ms)
    after = next_tick(schedule, at_ms)
    candidates = [t for t in (before, after) if t is not None]
    return min(candidates, key=lambda t: abs(t - at_ms)) if candidates else None


def tick_run_id(workflow: str, schedule: str, tick_ms: int) -> str:
    """The id of the run that ``schedule`` of ``workflow`` starts at ``tick_ms``."""
    stamp = datetime.fromtimestamp(tick_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{workflow}.{schedule}.{stamp}"


def named(schedules: list[Schedule]) -> dict[str, Schedule]:
    """Schedules by name (positional defaults filled in); DefinitionError on a duplicate."""
    found: dict[str, Schedule] = {}
    for i, schedule in enumerate(schedules):
        if not isinstance(schedule, Schedule):
            raise DefinitionError("schedules is a list of Schedule")
        schedule.check()
        name = schedule.name or ("cron" if i == 0 else f"cron{i}")
        if name in found:
            raise DefinitionError(f"two schedules are named {name!r}")
        found[name] = schedule
    return found
