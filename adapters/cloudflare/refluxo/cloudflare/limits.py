"""Cloudflare's figures that refluxo depends on, in one place (docs as of late 2026).

The scheduler, the stores, the deploy script (which loads this file by path: standard library
only, nothing imported) and the docs take them from here; a test keeps the docs in step.
"""

from __future__ import annotations

QUEUES_MAX_DELAY_SECONDS = 24 * 3600
"""The longest ``delaySeconds`` a Queues message or retry accepts (24 hours)."""

QUEUES_MAX_BATCH_SIZE = 100
"""The largest ``max_batch_size`` of a consumer."""

QUEUES_MAX_BATCH_TIMEOUT_SECONDS = 60
"""The longest ``max_batch_timeout`` of a consumer (the default waits up to 5 s)."""

QUEUES_MAX_RETRIES = 100
"""The most ``max_retries`` a consumer may set."""

QUEUES_DLQ_RETENTION_DAYS = 4
"""A dead-letter queue with no consumer drops its messages after this many days."""

D1_MAX_ROW_BYTES = 2_000_000
"""D1's limit on a string, a BLOB and a whole row (2,000,000 bytes)."""

KV_MAX_VALUE_BYTES = 25 * 1024 * 1024
"""Workers KV's limit on a value (25 MiB)."""

KV_MAX_KEY_BYTES = 512
"""Workers KV's limit on a key, in bytes of UTF-8."""

# The steps queue's consumer as deploy/cloudflare/deploy.py configures it.
CONSUMER_MAX_BATCH_SIZE = 10
"""Messages per consumer invocation; they are handled one after the other."""

CONSUMER_MAX_BATCH_TIMEOUT_SECONDS = 1
"""How long a partial batch waits: each step of a run waits up to this long for delivery, so
it is kept small (the platform's default, 5 s, would add up to 5 s to every step)."""

CONSUMER_MAX_RETRIES = 10
"""Redeliveries of a failing message before it goes to the dead-letter queue."""

CONSUMER_RETRY_DELAY_SECONDS = 30
"""The delay of a redelivery the Worker did not set itself (the handler raised before it
could ``retry(delaySeconds=...)`` each message, e.g. a misconfigured Worker)."""
