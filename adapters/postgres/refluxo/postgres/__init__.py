"""refluxo.postgres: runs and their schedule in one PostgreSQL database, shared by any number
of worker processes on any number of machines (the ``postgres`` extra: psycopg 3).

:class:`PostgresStateStore` keeps snapshots with compare-and-set on their version;
:class:`PostgresScheduler` keeps due messages that :meth:`PostgresScheduler.run` loops lease
with ``FOR UPDATE SKIP LOCKED`` and wake on ``NOTIFY``. Both take an open connection pool
(:func:`open_pool`); ``refluxo worker --postgres URL`` and ``refluxo dev --postgres URL`` put
them together.
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from .scheduler import PostgresScheduler
from .store import PostgresStateStore


async def open_pool(url: str, *, max_size: int = 10, min_size: int = 1) -> AsyncConnectionPool[Any]:
    """An open pool of autocommit connections to ``url`` (``postgresql://...``), holding
    ``min_size`` connections once it returns. Close it with ``await pool.close()``."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=min_size, max_size=max_size, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    return pool


__all__ = ["PostgresScheduler", "PostgresStateStore", "open_pool"]
