"""The proxy across a dropped broker connection."""

from __future__ import annotations

import os

import pytest
import structlog

from tests.integration.proxy.conftest import (
    Broker,
    Bucket,
    FakeWorker,
    ProxyFactory,
    job_for,
    wait_until,
)


def _count(proxy: object, outcome: str) -> float:
    value: float = proxy.metrics.jobs.labels(outcome=outcome)._value.get()  # type: ignore[attr-defined]
    return value


pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_proxy_reconnect_drops_stale_ack_and_job_runs_again(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.job_delay_s = 0.5
    proxy = await proxy_factory(fake_worker)
    await wait_until(lambda: proxy.readiness().ready)
    body = os.urandom(1024)
    job = job_for(body, "jobs/reconnect.sealed")
    await bucket.put(job.object_key, body)

    with structlog.testing.capture_logs() as logs:
        await broker.publish_job(job.model_dump_json().encode(), job.job_id)
        await wait_until(lambda: bool(fake_worker.jobs))
        connection = proxy._broker.connection  # type: ignore[union-attr]
        assert connection.transport is not None
        await connection.transport.connection.close()
        await wait_until(lambda: not proxy.readiness().ready)
        await wait_until(lambda: len(fake_worker.jobs) >= 2, timeout_s=10)
        await wait_until(lambda: _count(proxy, "succeeded") >= 1, timeout_s=10)
        results = await broker.results(3)

    assert "succeeded" in [r.status for r in results]
    assert {r.job_id for r in results} == {job.job_id}
    assert any(entry["event"] == "delivery_settle_dropped" for entry in logs)
    await wait_until(lambda: proxy.readiness().ready)
