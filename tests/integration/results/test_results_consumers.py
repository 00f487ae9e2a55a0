"""The consumers on the real RabbitMQ: acks after commit, idempotent, DLQ, junk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from services.results.consumers import Consumers
from services.results.db import make_engine
from services.results.handlers import MessageHandler
from services.results.metrics import Metrics
from services.results.store import JobStore
from shared.broker import JOBS_ROUTING_KEY, RESULTS_ROUTING_KEY, Topology, publish
from tests.fakes import FakeKeyService
from tests.integration.results.conftest import AMQP_URL, KEY_ID
from tests.integration.results.helpers import (
    job_message,
    queued_job,
    random_job_id,
    result_message,
    sealed_prediction,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def running(engine: AsyncEngine, topology: Topology) -> AsyncIterator[Consumers]:
    consumers = Consumers(
        MessageHandler(JobStore(engine)), AMQP_URL, topology, requeue_backoff_s=0.05
    )
    consumers.metrics = Metrics()
    await consumers.start()
    yield consumers
    await consumers.stop()


@pytest.fixture
async def exchange(
    running: Consumers, topology: Topology
) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    yield await channel.get_exchange(topology.results_exchange)
    await connection.close()


def _count(consumers: Consumers, queue: str, disposition: str) -> float:
    assert consumers.metrics is not None
    value = consumers.metrics.registry.get_sample_value(
        "obscura_results_messages_total", {"queue": queue, "disposition": disposition}
    )
    return value or 0.0


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _grew(
    consumers: Consumers, queue: str, disposition: str, before: float
) -> Callable[[], bool]:
    return lambda: _count(consumers, queue, disposition) > before


async def _send(exchange: aio_pika.abc.AbstractExchange, body: bytes) -> None:
    await publish(
        exchange,
        body,
        routing_key=RESULTS_ROUTING_KEY,
        message_id=random_job_id(),
        timeout_s=5,
    )


async def test_consumers_apply_results_idempotently(
    running: Consumers,
    exchange: aio_pika.abc.AbstractExchange,
    engine: AsyncEngine,
    topology: Topology,
    tenant: str,
) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    sealed = await sealed_prediction(
        FakeKeyService(KEY_ID), KEY_ID, tenant, job_id, {"benign": 0.4}
    )
    queue = topology.results_queue
    for status, body in [
        ("applied", result_message(tenant, job_id, "succeeded", sealed)),
        ("no_change", result_message(tenant, job_id, "succeeded", sealed)),
        ("no_change", result_message(tenant, job_id, "running")),
    ]:
        before = _count(running, queue, status)
        await _send(exchange, body)
        await _until(_grew(running, queue, status, before))
    job, stored = await store.result(tenant, job_id)
    assert job.status == "succeeded"
    assert stored.sealed_result == sealed
    assert running.running


async def test_consumers_ack_malformed_results_and_log_them(
    running: Consumers, exchange: aio_pika.abc.AbstractExchange, topology: Topology
) -> None:
    with capture_logs() as logs:
        await _send(exchange, b'{"version": 1, "status": "exploded"}')
        await _until(lambda: _count(running, topology.results_queue, "malformed") == 1)
    dropped = [e for e in logs if e["event"] == "result message dropped"]
    assert dropped and dropped[0]["reason"] == "invalid_message"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.results_queue, passive=True)
        assert queue.declaration_result.message_count == 0


async def test_consumers_fail_dead_lettered_jobs(
    running: Consumers, engine: AsyncEngine, topology: Topology, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        jobs_queue = await channel.get_queue(topology.jobs_queue)
        jobs_exchange = await channel.get_exchange(topology.jobs_exchange)
        await jobs_exchange.publish(
            aio_pika.Message(job_message(tenant, job_id)), routing_key=JOBS_ROUTING_KEY
        )
        # Rejected without requeue, as a proxy that gives up does: the jobs
        # queue dead-letters it to the queue the results service consumes.
        incoming = await jobs_queue.get(timeout=5)
        assert incoming is not None
        await incoming.reject(requeue=False)
    dead = topology.dead_letter_queue
    await _until(lambda: _count(running, dead, "applied") == 1)
    job = await store.get(tenant, job_id)
    assert job is not None
    assert (job.status, job.failure_reason) == ("failed", "retries_exhausted")


async def test_consumers_requeue_while_database_is_down(
    engine: AsyncEngine, topology: Topology, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    # Port 9 (discard) on loopback: nothing listens, so every connect is refused.
    down = make_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:9/none", pool_size=1, timeout_s=1
    )
    broken = Consumers(
        MessageHandler(JobStore(down)), AMQP_URL, topology, requeue_backoff_s=0.05
    )
    broken.metrics = Metrics()
    await broken.start()
    try:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(topology.results_exchange)
            await _send(exchange, result_message(tenant, job_id, "running"))
        await _until(lambda: _count(broken, topology.results_queue, "requeued") >= 2)
    finally:
        await broken.stop()
        await down.dispose()
    assert await _status_of(store, tenant, job_id) == "queued"
    healthy = Consumers(MessageHandler(store), AMQP_URL, topology)
    healthy.metrics = Metrics()
    await healthy.start()
    try:
        await _until(lambda: _count(healthy, topology.results_queue, "applied") == 1)
    finally:
        await healthy.stop()
    assert await _status_of(store, tenant, job_id) == "running"


async def _status_of(store: JobStore, tenant: str, job_id: str) -> str:
    job = await store.get(tenant, job_id)
    assert job is not None
    return job.status
