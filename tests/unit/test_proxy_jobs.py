from __future__ import annotations

import asyncio
import base64
import hashlib

import aiormq
import pytest

from services.enclave_proxy.jobs import JobHandler
from services.enclave_proxy.metrics import ProxyMetrics
from shared.errors import PermanentDependencyError, Reason, RetryableDependencyError
from shared.link import LinkClosedError, PeerError
from shared.retry import RetryPolicy
from tests.unit.proxy_fakes import (
    FakeDelivery,
    FakeObjects,
    FakeResults,
    FakeWorker,
    job_message,
)

SEALED = b"sealed image bytes, in pieces"
NO_WAIT = RetryPolicy(base_delay_s=0.0, max_delay_s=0.0)


def _setup(
    worker: FakeWorker | None = None, body: bytes = SEALED
) -> tuple[JobHandler, FakeWorker, FakeResults, FakeObjects, FakeDelivery]:
    job = job_message(body)
    objects = FakeObjects({(job.bucket, job.object_key): body})
    worker = worker or FakeWorker()
    results = FakeResults()
    handler = JobHandler(
        worker, objects, results, ProxyMetrics(), job_timeout_s=5, retry=NO_WAIT
    )
    delivery = FakeDelivery(job.model_dump_json().encode())
    return handler, worker, results, objects, delivery


async def test_job_handler_success_publishes_then_acks() -> None:
    handler, worker, results, _, delivery = _setup()

    outcome = await handler.handle(delivery)

    assert outcome == "succeeded"
    assert results.statuses() == ["running", "succeeded"]
    assert delivery.settled == [("ack", False)]
    final = results.published[-1]
    sealed = worker.result.sealed_result
    assert final.sealed_result == base64.b64encode(sealed).decode()
    assert final.sealed_result_sha256 == hashlib.sha256(sealed).hexdigest()
    assert final.model is not None and final.model.name == "nyu"
    assert final.timings_s == {"infer": 0.5}
    assert worker.received[0][1] == SEALED


async def test_job_handler_permanent_worker_error_fails_and_acks() -> None:
    error = PeerError(
        "tampered", reason=Reason.CIPHERTEXT_TAMPERED, retryable=False, job_id=None
    )
    handler, _, results, _, delivery = _setup(FakeWorker(job_error=error))

    assert await handler.handle(delivery) == "failed"
    assert results.statuses() == ["running", "failed"]
    assert results.published[-1].reason == "ciphertext_tampered"
    assert delivery.settled == [("ack", False)]


async def test_job_handler_transient_error_nacks_with_requeue() -> None:
    handler, _, results, _, delivery = _setup(
        FakeWorker(job_error=LinkClosedError("gone"))
    )

    assert await handler.handle(delivery) == "retried"
    assert results.statuses() == ["running"]
    assert delivery.settled == [("nack", True)]


async def test_job_handler_missing_object_fails_not_found() -> None:
    handler, _, results, objects, delivery = _setup()
    objects.error = PermanentDependencyError("no such key", reason=Reason.NOT_FOUND)

    assert await handler.handle(delivery) == "failed"
    assert results.published[-1].reason == "not_found"


async def test_job_handler_size_mismatch_fails_without_running() -> None:
    handler, worker, results, objects, delivery = _setup()
    key = next(iter(objects.objects))
    objects.objects[key] = SEALED + b"extra"

    assert await handler.handle(delivery) == "failed"
    assert results.published[-1].reason == "ciphertext_tampered"
    assert worker.received == []


async def test_job_handler_hash_mismatch_fails_the_job() -> None:
    handler, _, results, objects, delivery = _setup()
    key = next(iter(objects.objects))
    objects.objects[key] = bytes(reversed(SEALED))

    assert await handler.handle(delivery) == "failed"
    assert results.published[-1].reason == "ciphertext_tampered"


async def test_job_handler_failed_result_publish_requeues_instead_of_ack() -> None:
    handler, _, results, _, delivery = _setup()
    results.fail_on = {"succeeded"}
    results.error = RetryableDependencyError("no confirm")

    assert await handler.handle(delivery) == "retried"
    assert delivery.settled == [("nack", True)]


async def test_job_handler_malformed_body_rejects_and_reports_when_ids_read() -> None:
    handler, _, results, _, _ = _setup()
    job = job_message(SEALED)
    body = job.model_dump_json(exclude={"sealed_sha256"}).encode()
    delivery = FakeDelivery(body)

    assert await handler.handle(delivery) == "rejected"
    assert delivery.settled == [("reject", False)]
    failed = results.published[-1]
    assert (failed.status, failed.reason) == ("failed", "invalid_message")
    assert failed.job_id == job.job_id
    assert failed.message is not None and "sealed_sha256" in failed.message


async def test_job_handler_garbage_body_rejects_without_result() -> None:
    handler, _, results, _, _ = _setup()
    delivery = FakeDelivery(b"\xff not json")

    assert await handler.handle(delivery) == "rejected"
    assert delivery.settled == [("reject", False)]
    assert results.published == []


async def test_job_handler_settle_on_closed_channel_is_dropped() -> None:
    handler, _, results, _, delivery = _setup()
    delivery.fail_with = aiormq.exceptions.ChannelInvalidStateError("closed")

    assert await handler.handle(delivery) == "succeeded"
    assert results.statuses() == ["running", "succeeded"]


async def test_job_handler_cancelled_job_is_nacked_with_requeue() -> None:
    started = asyncio.Event()

    class SlowWorker(FakeWorker):
        async def run_job(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            started.set()
            await asyncio.sleep(60)
            raise AssertionError("not reached")

    handler, _, _, _, delivery = _setup(SlowWorker())
    task = asyncio.create_task(handler.handle(delivery))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert delivery.settled == [("nack", True)]
