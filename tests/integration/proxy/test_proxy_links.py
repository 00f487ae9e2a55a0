"""The proxy when its link to the worker is cut, stalled or a job keeps failing."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest

from shared.errors import Reason
from shared.link import ErrorInfo
from shared.messages import JobMessage
from tests.faults import FaultyLink
from tests.integration.proxy.conftest import (
    Broker,
    Bucket,
    FakeWorker,
    ProxyFactory,
    job_for,
    wait_until,
    worker_error,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SEALED = os.urandom(64 * 1024)


@dataclass
class _Port:
    port: int


async def _submit(broker: Broker, bucket: Bucket, job: JobMessage | None = None) -> str:
    job = job or job_for(SEALED, f"jobs/{os.urandom(4).hex()}.sealed")
    await bucket.put(job.object_key, SEALED)
    await broker.publish_job(job.model_dump_json().encode(), job.job_id)
    return job.job_id


async def test_proxy_link_cut_mid_job_retries_and_succeeds_once(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.job_delay_s = 0.5
    async with FaultyLink("127.0.0.1", fake_worker.port) as link:
        await proxy_factory(_Port(link.port))
        job_id = await _submit(broker, bucket)
        await wait_until(lambda: len(fake_worker.jobs) == 1)
        fake_worker.job_delay_s = 0.0
        link.cut()  # resets the connection carrying the job
        link.restore()  # the next connection goes through
        messages = await broker.results(3, timeout_s=20)
    finals = [m for m in messages if m.status != "running"]
    assert [(m.job_id, m.status) for m in finals] == [(job_id, "succeeded")]
    assert len(fake_worker.jobs) == 2  # the cut attempt and the retry
    assert await broker.jobs_waiting() == 0


async def test_proxy_stalled_worker_times_out_and_job_is_retried(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    async with FaultyLink("127.0.0.1", fake_worker.port) as link:
        await proxy_factory(_Port(link.port), job_timeout_s=1.0)
        await wait_until(lambda: fake_worker.credentials != [])
        link.stall()
        job_id = await _submit(broker, bucket)
        await asyncio.sleep(1.5)
        link.restore()
        messages = await broker.results(2, timeout_s=30)
        while messages[-1].status == "running":
            messages += await broker.results(1, timeout_s=30)
    assert messages[-1].job_id == job_id
    assert messages[-1].status == "succeeded"


async def test_proxy_jobs_behind_a_retrying_job_keep_flowing(
    broker: Broker, bucket: Bucket, proxy_factory: ProxyFactory
) -> None:
    worker = await _SelectiveWorker().start()
    try:
        await proxy_factory(worker)
        poison = job_for(SEALED, f"jobs/{os.urandom(4).hex()}.sealed")
        worker.poison = poison.job_id
        await _submit(broker, bucket, poison)
        others = [await _submit(broker, bucket) for _ in range(4)]
        dead = await broker.dead_letter(timeout_s=30)
        assert worker.poison.encode() in dead
        succeeded: set[str] = set()
        async with asyncio.timeout(30):
            while succeeded != set(others):
                (message,) = await broker.results(1, timeout_s=30)
                if message.status == "succeeded":
                    succeeded.add(message.job_id)
    finally:
        await worker.stop()
    assert succeeded == set(others)
    assert worker.poison not in succeeded


class _SelectiveWorker(FakeWorker):
    poison: str = ""

    def error_for(self, job_id: str) -> ErrorInfo | None:
        if job_id == self.poison:
            return worker_error(Reason.THROTTLED, retryable=True)
        return None
