"""The proxy when the broker drops it: from the broker's side, and by timeout."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from services.enclave_proxy.service import ProxyService
from tests.integration.faults.broker_side import (
    close_connections_async,
    short_consumer_timeout,
)
from tests.integration.proxy.conftest import (
    Broker,
    Bucket,
    FakeWorker,
    ProxyFactory,
    job_for,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _count(proxy: ProxyService, outcome: str) -> float:
    value: float = proxy.metrics.jobs.labels(outcome=outcome)._value.get()
    return value


async def _readiness_reasons(proxy: ProxyService, seen: list[str | None]) -> None:
    while True:
        state = proxy.readiness()
        if not seen or seen[-1] != state.reason:
            seen.append(state.reason)
        await asyncio.sleep(0.01)


async def _drain_results(broker: Broker, settle_s: float = 1.5) -> list[str]:
    """Every result status on the queue, waiting until none came for a while."""
    statuses: list[str] = []
    while True:
        try:
            got = await broker.results(1, timeout_s=settle_s)
        except TimeoutError:
            return statuses
        statuses.extend(r.status for r in got)


async def test_faults_proxy_broker_closes_connection_job_runs_once(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.job_delay_s = 6.0
    proxy = await proxy_factory(fake_worker)
    await wait_until(lambda: proxy.readiness().ready)
    body = os.urandom(2048)
    job = job_for(body, "jobs/broker-side.sealed")
    await bucket.put(job.object_key, body)
    seen: list[str | None] = []
    watching = asyncio.create_task(_readiness_reasons(proxy, seen))
    try:
        await broker.publish_job(job.model_dump_json().encode(), job.job_id)
        await wait_until(lambda: bool(fake_worker.jobs))
        closed = await close_connections_async(broker.topology.jobs_queue)
        await wait_until(lambda: _count(proxy, "duplicate") >= 1, timeout_s=20)
        await wait_until(lambda: proxy.readiness().ready, timeout_s=20)
    finally:
        watching.cancel()
    statuses = await _drain_results(broker)

    assert closed == 1
    assert "broker_disconnected" in seen, seen
    assert seen[-1] is None
    assert len(fake_worker.jobs) == 1
    assert statuses.count("succeeded") == 1, statuses
    assert _count(proxy, "succeeded") == 1
    assert await broker.jobs_waiting() == 0


async def test_faults_proxy_job_outliving_consumer_timeout_completes_once(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.job_delay_s = 8.0
    body = os.urandom(2048)
    job = job_for(body, "jobs/consumer-timeout.sealed")
    await bucket.put(job.object_key, body)
    seen: list[str | None] = []
    async with short_consumer_timeout(2000):
        proxy = await proxy_factory(fake_worker, job_timeout_s=30)
        await wait_until(lambda: proxy.readiness().ready)
        watching = asyncio.create_task(_readiness_reasons(proxy, seen))
        await broker.publish_job(job.model_dump_json().encode(), job.job_id)
        # The broker closes the channel once the delivery is older than the
        # timeout and delivers the job again; the copy waits for the running
        # job and is then acked as a duplicate. The channel is back within
        # milliseconds, too fast to sample reliably, so the duplicate is the
        # evidence that the timeout fired.
        await wait_until(lambda: _count(proxy, "duplicate") >= 1, timeout_s=25)
    try:
        await wait_until(
            lambda: _count(proxy, "succeeded") + _count(proxy, "duplicate") >= 2,
            timeout_s=30,
        )
        # Until every copy is settled: a late one would show as a second run.
        await asyncio.sleep(3)
    finally:
        watching.cancel()
    statuses = await _drain_results(broker)
    print(f"consumer timeout: readiness went {seen}", file=sys.__stderr__)

    assert len(fake_worker.jobs) == 1
    assert statuses.count("succeeded") == 1, statuses
    # The reopened channel may also have been given the short timeout, so the
    # copy can come back more than once; each is acked without a second run.
    assert _count(proxy, "duplicate") >= 1
    assert seen[-1] is None
    assert await broker.jobs_waiting() == 0
