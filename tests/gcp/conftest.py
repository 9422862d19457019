"""Fixtures that run the real Google Cloud emulators.

Every test under tests/gcp/ is marked ``external_service``. The emulators are
started once per session, lazily (only if a test asks for them). If one cannot
start, the fixture fails the test with the emulator's output, unless
``REFLUXO_SKIP_GCP=1`` is set, in which case the tests that need it are skipped.

Async clients are built per test: a ``grpc.aio`` channel belongs to the event
loop it was first used on, and pytest-asyncio gives each test its own loop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

try:  # tests/gcp as a package (with __init__.py files)
    from .emulators import CloudTasksEmulator, EmulatorError, FirestoreEmulator
except ImportError:  # rootdir-less layout: pytest's "prepend" mode or importlib mode
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from emulators import CloudTasksEmulator, EmulatorError, FirestoreEmulator  # type: ignore[no-redef]

GCP_PROJECT = "refluxo-test"
TASKS_LOCATION = "us-central1"
TASKS_QUEUE = "refluxo"
TASKS_QUEUE_PATH = f"projects/{GCP_PROJECT}/locations/{TASKS_LOCATION}/queues/{TASKS_QUEUE}"
# Enough for a test of retries, small enough that a failing target is not
# hammered for long: the emulator re-sends failed tasks every ~0.1 s.
TASKS_MAX_RETRIES = 3

_HERE = Path(__file__).resolve().parent


def _skip_allowed() -> bool:
    return os.environ.get("REFLUXO_SKIP_GCP", "") == "1"


def _start(emulator: Any) -> None:
    try:
        emulator.start()
    except EmulatorError as exc:
        error = str(exc)
    else:
        return
    # Outside the except block, so the report is not chained to the EmulatorError.
    if _skip_allowed():
        pytest.skip(f"REFLUXO_SKIP_GCP=1 and {emulator.name} did not start: {error}")
    pytest.fail(
        f"{emulator.name} could not start (set REFLUXO_SKIP_GCP=1 to skip these tests):\n{error}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    """The Firestore emulator, one per session; see :func:`firestore_client` to reset."""
    emulator = FirestoreEmulator(project=GCP_PROJECT)
    _start(emulator)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def tasks_emulator() -> Iterator[CloudTasksEmulator]:
    """gcloud-tasks-emulator with the queue ``TASKS_QUEUE_PATH``, one per session."""
    emulator = CloudTasksEmulator(queue_path=TASKS_QUEUE_PATH, max_retries=TASKS_MAX_RETRIES)
    _start(emulator)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
async def firestore_client(firestore_emulator: FirestoreEmulator) -> AsyncIterator[Any]:
    """A ``google.cloud.firestore.AsyncClient`` on an emptied emulator database."""
    from google.cloud import firestore

    firestore_emulator.reset()
    # The client reads FIRESTORE_EMULATOR_HOST once, in its constructor; it
    # then uses an insecure channel and anonymous credentials by itself.
    with mock.patch.dict(os.environ, firestore_emulator.env):
        client = firestore.AsyncClient(project=firestore_emulator.project)
    try:
        yield client
    finally:
        # AsyncClient has no async close(); close the grpc.aio channel ourselves.
        if client._firestore_api_internal is not None:
            await client._firestore_api.transport.close()


@pytest.fixture
async def tasks_client(tasks_emulator: CloudTasksEmulator) -> AsyncIterator[Any]:
    """A ``tasks_v2.CloudTasksAsyncClient`` talking gRPC to the emulator."""
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import (
        CloudTasksGrpcAsyncIOTransport,
    )

    channel = grpc.aio.insecure_channel(tasks_emulator.address)
    # Given a channel, the transport ignores credentials: no ADC lookup.
    client = tasks_v2.CloudTasksAsyncClient(
        transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
    )
    async with client:  # closes the channel
        yield client


@pytest.fixture(scope="session")
def deploy_script() -> Any:
    """deploy/gcp/deploy.py as a module (it is a script, not a package): ``build``, ``main``."""
    import importlib.util

    path = _HERE.parents[1] / "deploy" / "gcp" / "deploy.py"
    spec = importlib.util.spec_from_file_location("refluxo_deploy_gcp", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
