"""The enclave proxy end to end: real RabbitMQ, moto's S3, a fake worker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import httpx
import pytest
import structlog

from shared.errors import Reason
from tests.integration.proxy.conftest import (
    WORKER_SECRET,
    Broker,
    Bucket,
    FakeWorker,
    ProxyFactory,
    job_for,
    wait_until,
    worker_error,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SEALED = os.urandom(200 * 1024)


async def _submit(broker: Broker, bucket: Bucket, body: bytes = SEALED) -> str:
    job = job_for(body, f"jobs/{os.urandom(4).hex()}.sealed")
    await bucket.put(job.object_key, body)
    await broker.publish_job(job.model_dump_json().encode(), job.job_id)
    return job.job_id


async def test_proxy_job_succeeds_and_is_acked(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_worker)
    job_id = await _submit(broker, bucket)

    running, succeeded = await broker.results(2)

    assert (running.status, succeeded.status) == ("running", "succeeded")
    assert succeeded.job_id == job_id
    sealed = base64.b64decode(succeeded.sealed_result or "")
    assert sealed == b"sealed-prediction:" + job_id.encode()
    assert succeeded.sealed_result_sha256 == hashlib.sha256(sealed).hexdigest()
    assert succeeded.receipt == {"format": "obscura-receipt/1"}
    assert succeeded.model is not None and succeeded.model.version == "demo-1"
    assert fake_worker.bodies == [SEALED]
    assert fake_worker.jobs[0].nonce == bytes.fromhex("a1b2c3d4")
    await wait_until(lambda: proxy.metrics.in_flight._value.get() == 0)
    assert await broker.jobs_waiting() == 0
    async with httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{proxy.health.port}"
        ready = await client.get(f"{url}/readyz")
        metrics = (await client.get(f"{url}/metrics")).text
    assert ready.status_code == 200
    assert 'obscura_proxy_jobs_total{outcome="succeeded"} 1.0' in metrics


async def test_proxy_permanent_worker_error_fails_without_retry(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.error = worker_error(Reason.CIPHERTEXT_TAMPERED, retryable=False)
    await proxy_factory(fake_worker)
    await _submit(broker, bucket)

    _, failed = await broker.results(2)
    await asyncio.sleep(0.3)

    assert (failed.status, failed.reason) == ("failed", "ciphertext_tampered")
    assert len(fake_worker.jobs) == 1
    assert await broker.jobs_waiting() == 0


async def test_proxy_retryable_error_redelivers_until_dead_lettered(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.error = worker_error(Reason.THROTTLED, retryable=True)
    await proxy_factory(fake_worker)
    job_id = await _submit(broker, bucket)

    dead = await broker.dead_letter()

    assert job_id.encode() in dead
    assert len(fake_worker.jobs) >= 2
    statuses = {r.status for r in await broker.results(len(fake_worker.jobs))}
    assert statuses == {"running"}


async def test_proxy_missing_object_fails_not_found(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    await proxy_factory(fake_worker)
    job = job_for(SEALED, "jobs/never-uploaded.sealed")
    await broker.publish_job(job.model_dump_json().encode(), job.job_id)

    _, failed = await broker.results(2)

    assert (failed.status, failed.reason) == ("failed", "not_found")
    assert fake_worker.jobs == []


async def test_proxy_malformed_body_is_dead_lettered(
    broker: Broker, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_worker)
    await broker.publish_job(b'{"version": 1, "job_id": 42}', "bad-1")

    dead = await broker.dead_letter()

    assert dead == b'{"version": 1, "job_id": 42}'
    await wait_until(
        lambda: proxy.metrics.jobs.labels(outcome="rejected")._value.get() == 1
    )


async def test_proxy_not_ready_worker_consumes_nothing(
    broker: Broker, bucket: Bucket, fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    fake_worker.ready = False
    proxy = await proxy_factory(fake_worker)
    await _submit(broker, bucket)
    await wait_until(lambda: proxy.supervisor.status is not None)
    await asyncio.sleep(0.4)

    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{proxy.health.port}/readyz")
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "not_ready",
        "reason": "worker_not_ready: model_locked",
    }
    assert fake_worker.jobs == []
    assert await broker.jobs_waiting() == 1

    fake_worker.ready = True
    _, succeeded = await broker.results(2)
    assert succeeded.status == "succeeded"
    assert proxy.readiness().ready


async def test_proxy_hands_credentials_without_logging_them(
    fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    with structlog.testing.capture_logs() as logs:
        proxy = await proxy_factory(fake_worker)
        await wait_until(lambda: bool(fake_worker.credentials))
        await wait_until(lambda: proxy.readiness().ready)

    handed = fake_worker.credentials[0]
    assert handed.access_key_id == "AKIAENCLAVEDEV"
    assert handed.secret_access_key == WORKER_SECRET
    assert any(entry["event"] == "credentials_handed" for entry in logs)
    assert WORKER_SECRET not in repr(logs)


async def test_proxy_kms_relay_carries_bytes_to_the_upstream(
    fake_worker: FakeWorker, proxy_factory: ProxyFactory
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while piece := await reader.read(4096):
            writer.write(piece)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        proxy = await proxy_factory(fake_worker, kms_upstream_port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.relay.port)
        payload = os.urandom(100_000)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
    finally:
        upstream.close()

    assert echoed == payload
    assert proxy.relay.relay.total == 1


async def test_proxy_two_proxies_share_one_queue(
    broker: Broker, bucket: Bucket, proxy_factory: ProxyFactory
) -> None:
    workers = [await FakeWorker(job_delay_s=0.1).start() for _ in range(2)]
    try:
        for worker in workers:
            await proxy_factory(worker)
        for worker in workers:
            await wait_until(lambda w=worker: bool(w.credentials))  # type: ignore[misc]
        submitted = {await _submit(broker, bucket, b"small") for _ in range(6)}

        results = await broker.results(12)
    finally:
        for worker in workers:
            await worker.stop()

    done = {r.job_id for r in results if r.status == "succeeded"}
    assert done == submitted
    assert all(worker.jobs for worker in workers)
    assert sum(len(worker.jobs) for worker in workers) == 6
