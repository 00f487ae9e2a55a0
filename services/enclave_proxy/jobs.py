"""One delivery from the jobs queue, from parse to ack or nack.

Order matters: a ``running`` result goes out first, the sealed object streams from
S3 to the worker, and the ``succeeded`` or ``failed`` result must be confirmed by
the broker before the delivery is acked. A result that cannot be published leaves
the delivery nacked with requeue; the job runs again and the results service,
keyed by job id, keeps the outcome idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import aiormq
import structlog
from aio_pika.abc import AbstractExchange
from pydantic import ValidationError

from services.enclave_proxy.metrics import ProxyMetrics
from services.enclave_proxy.objects import ObjectStore
from services.enclave_proxy.outcomes import Verdict, classify, redelivery_delay
from services.enclave_proxy.worker import Worker
from shared.broker import RESULTS_ROUTING_KEY, publish
from shared.enclave_protocol import JobOutcome, JobRequest
from shared.errors import CallerError, IntegrityError, ObscuraError
from shared.link import ProtocolError
from shared.logging import get_logger
from shared.messages import JobMessage, ModelIdentity, ResultMessage, parse_job
from shared.retry import RetryPolicy

log = get_logger(__name__)

INVALID_MESSAGE = "invalid_message"
DELIVERY_COUNT_HEADER = "x-delivery-count"
# A job that ended in one of these has its result confirmed by the broker.
FINAL_OUTCOMES = frozenset({"succeeded", "failed"})
# How many finished job ids a proxy remembers, to ack late redeliveries of them
# (a lost ack comes back within seconds; other proxies rely on results' idempotency).
FINISHED_MEMORY = 4096
# Settling a delivery whose channel is gone raises one of these; the broker
# redelivers such a message by itself, so the loop only logs them.
SETTLE_ERRORS = (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError)


class Delivery(Protocol):
    """The parts of an incoming AMQP message the job loop uses."""

    @property
    def body(self) -> bytes: ...

    @property
    def delivery_tag(self) -> int | None: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    async def ack(self, multiple: bool = False) -> None: ...

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None: ...

    async def reject(self, requeue: bool = False) -> None: ...


class ResultPublisher(Protocol):
    async def publish(self, result: ResultMessage) -> None:
        """Returns once the broker confirmed the result; raises ObscuraError."""
        ...


class BrokerResults:
    """``ResultPublisher`` on the results exchange, confirmed and persistent."""

    def __init__(self, exchange: AbstractExchange, *, timeout_s: float) -> None:
        self._exchange = exchange
        self._timeout_s = timeout_s

    async def publish(self, result: ResultMessage) -> None:
        body = result.model_dump_json(exclude_none=True).encode()
        await publish(
            self._exchange,
            body,
            routing_key=RESULTS_ROUTING_KEY,
            message_id=f"{result.job_id}.{result.status}",
            timeout_s=self._timeout_s,
        )


async def settle(action: Awaitable[None], what: str) -> bool:
    """Ack, nack or reject; a closed channel drops the call with a log line."""
    try:
        await action
    except SETTLE_ERRORS as exc:
        log.warning("delivery_settle_dropped", action=what, error=type(exc).__name__)
        return False
    return True


class _SettleOnce:
    """A delivery that remembers whether an ack, nack or reject was sent."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery
        self.settled = False

    @property
    def body(self) -> bytes:
        return self._delivery.body

    @property
    def delivery_tag(self) -> int | None:
        return self._delivery.delivery_tag

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._delivery.headers

    async def ack(self, multiple: bool = False) -> None:
        self.settled = True
        await self._delivery.ack(multiple)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self.settled = True
        await self._delivery.nack(multiple, requeue)

    async def reject(self, requeue: bool = False) -> None:
        self.settled = True
        await self._delivery.reject(requeue)


class JobHandler:
    """Runs one delivery to its end; never raises into the consumer loop."""

    def __init__(
        self,
        worker: Worker,
        objects: ObjectStore,
        results: ResultPublisher,
        metrics: ProxyMetrics,
        *,
        job_timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        self._worker = worker
        self._objects = objects
        self._results = results
        self._metrics = metrics
        self._job_timeout_s = job_timeout_s
        self._retry = retry
        self._running: dict[str, asyncio.Future[str]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    async def handle(self, delivery: Delivery) -> str:
        """The outcome: one of ``metrics.OUTCOMES``."""
        started = time.monotonic()
        self._metrics.in_flight.inc()
        outcome = "abandoned"
        guarded = _SettleOnce(delivery)
        try:
            with structlog.contextvars.bound_contextvars(
                delivery_tag=delivery.delivery_tag
            ):
                outcome = await self._handle(guarded)
        except asyncio.CancelledError:
            # Shutdown past its grace period: give the job back to the queue,
            # unless an ack or nack already went out (a second one is a channel
            # error that would close the channel).
            if not guarded.settled:
                await settle(delivery.nack(requeue=True), "nack")
            raise
        finally:
            self._metrics.in_flight.dec()
            self._metrics.duration.observe(time.monotonic() - started)
            self._metrics.jobs.labels(outcome=outcome).inc()
        return outcome

    async def _handle(self, delivery: Delivery) -> str:
        try:
            job = parse_job(delivery.body)
        except CallerError as exc:
            await self._reject(delivery, exc)
            return "rejected"
        with structlog.contextvars.bound_contextvars(job_id=job.job_id):
            return await self._process(delivery, job)

    async def _process(self, delivery: Delivery, job: JobMessage) -> str:
        """Run the job once, even when the broker hands it over again meanwhile.

        A delivery whose channel closed (a dropped connection, the broker's
        consumer timeout) comes back while its first copy still runs here, or
        just after. The copy waits for the first; if that one published a final
        result, only its ack was lost, so the copy is acked without running the
        job again.
        """
        while (earlier := self._running.get(job.job_id)) is not None:
            log.info("job_already_running", delivery_count=_delivery_count(delivery))
            await asyncio.shield(earlier)
        if job.job_id in self._finished:
            log.info("job_already_finished", delivery_count=_delivery_count(delivery))
            await settle(delivery.ack(), "ack")
            return "duplicate"
        finished: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._running[job.job_id] = finished
        outcome = "abandoned"
        try:
            outcome = await self._process_once(delivery, job)
        finally:
            del self._running[job.job_id]
            finished.set_result(outcome)
            if outcome in FINAL_OUTCOMES:
                self._remember(job.job_id)
        return outcome

    def _remember(self, job_id: str) -> None:
        """Keep the last ``FINISHED_MEMORY`` job ids whose result is confirmed."""
        self._finished[job_id] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    async def _process_once(self, delivery: Delivery, job: JobMessage) -> str:
        try:
            await self._results.publish(_running(job))
            result = await self._run(job)
        except Exception as exc:
            return await self._settle_failure(delivery, job, classify(exc))
        try:
            await self._results.publish(result)
        except ObscuraError as exc:
            return await self._requeue(delivery, classify(exc))
        await settle(delivery.ack(), "ack")
        log.info("job_succeeded", model=job.model)
        return "succeeded"

    async def _run(self, job: JobMessage) -> ResultMessage:
        request = job_request(job)
        async with self._objects.open(job.bucket, job.object_key) as sealed:
            if sealed.size != job.sealed_size:
                raise IntegrityError(
                    f"sealed object {job.object_key!r} is {sealed.size} bytes, the "
                    f"job announces {job.sealed_size}; re-upload the job."
                )
            outcome = await self._worker.run_job(
                request,
                checked_pieces(sealed.pieces, job),
                timeout_s=self._job_timeout_s,
            )
        return await asyncio.to_thread(succeeded_result, job, outcome)

    async def _settle_failure(
        self, delivery: Delivery, job: JobMessage, verdict: Verdict
    ) -> str:
        if verdict.retry:
            return await self._requeue(delivery, verdict)
        try:
            await self._results.publish(_failed(job, verdict.reason, verdict.message))
        except ObscuraError as exc:
            return await self._requeue(delivery, classify(exc))
        await settle(delivery.ack(), "ack")
        log.info("job_failed", reason=verdict.reason, error=verdict.message)
        return "failed"

    async def _requeue(self, delivery: Delivery, verdict: Verdict) -> str:
        count = _delivery_count(delivery)
        delay = redelivery_delay(count, self._retry)
        log.warning(
            "job_requeued",
            reason=verdict.reason,
            error=verdict.message,
            delivery_count=count,
            delay_s=round(delay, 3),
        )
        await asyncio.sleep(delay)
        await settle(delivery.nack(requeue=True), "nack")
        return "retried"

    async def _reject(self, delivery: Delivery, exc: CallerError) -> None:
        fields = _invalid_fields(exc)
        message = (
            f"the job message failed validation at {fields}; the producer must "
            "send a version-1 job."
        )
        log.warning("job_rejected", reason=INVALID_MESSAGE, fields=fields)
        failed = _failed_from_raw(delivery.body, message)
        if failed is not None:
            try:
                await self._results.publish(failed)
            except ObscuraError as error:
                log.warning("invalid_job_result_lost", error=type(error).__name__)
        await settle(delivery.reject(requeue=False), "reject")


def job_request(job: JobMessage) -> JobRequest:
    try:
        nonce = bytes.fromhex(job.nonce)
    except ValueError as exc:
        raise CallerError(
            f"nonce of job {job.job_id} has {len(job.nonce)} hex digits; send an "
            "even number."
        ) from exc
    return JobRequest(
        job_id=job.job_id,
        tenant=job.tenant,
        nonce=nonce,
        body_size=job.sealed_size,
        model=job.model,
        view=job.view,
    )


async def checked_pieces(
    pieces: AsyncIterator[bytes], job: JobMessage
) -> AsyncIterator[bytes]:
    """Pass the pieces through, checking the total size and SHA-256 on the way."""
    hasher, count = hashlib.sha256(), 0
    async for piece in pieces:
        count += len(piece)
        if count > job.sealed_size:
            raise IntegrityError(
                f"sealed object {job.object_key!r} grew past its announced "
                f"{job.sealed_size} bytes while streaming; re-upload the job."
            )
        # hashlib drops the GIL on large buffers, so a thread keeps the loop free.
        await asyncio.to_thread(hasher.update, piece)
        yield piece
    if hasher.hexdigest() != job.sealed_sha256:
        raise IntegrityError(
            f"sealed object {job.object_key!r} does not match the job's "
            "sealed_sha256; it was altered after upload."
        )


def succeeded_result(job: JobMessage, outcome: JobOutcome) -> ResultMessage:
    """The ``succeeded`` message; a worker answer that does not fit is a bug."""
    try:
        attributes = outcome.attributes
        receipt = json.loads(outcome.receipt)
        timings = json.loads(attributes.get("timings", "{}"))
        return ResultMessage(
            job_id=job.job_id,
            tenant=job.tenant,
            status="succeeded",
            at=datetime.now(UTC),
            sealed_result=base64.b64encode(outcome.sealed_result).decode(),
            sealed_result_sha256=hashlib.sha256(outcome.sealed_result).hexdigest(),
            receipt=receipt,
            model=ModelIdentity(
                name=attributes["model_name"],
                version=attributes["model_version"],
                sha256=attributes["model_sha256"],
            ),
            timings_s=timings,
        )
    except (KeyError, ValueError, ValidationError) as exc:
        raise ProtocolError(
            f"the worker's result for job {job.job_id} is malformed "
            f"({type(exc).__name__}); check the worker's RESULT attributes."
        ) from exc


def _running(job: JobMessage) -> ResultMessage:
    return ResultMessage(
        job_id=job.job_id, tenant=job.tenant, status="running", at=datetime.now(UTC)
    )


def _failed(job: JobMessage, reason: str, message: str) -> ResultMessage:
    return ResultMessage(
        job_id=job.job_id,
        tenant=job.tenant,
        status="failed",
        at=datetime.now(UTC),
        reason=reason,
        message=message,
    )


def _failed_from_raw(body: bytes, message: str) -> ResultMessage | None:
    """A ``failed`` result for an invalid job whose id and tenant still read."""
    try:
        data = json.loads(body)
        return ResultMessage(
            job_id=data["job_id"],
            tenant=data["tenant"],
            status="failed",
            at=datetime.now(UTC),
            reason=INVALID_MESSAGE,
            message=message,
        )
    except (ValueError, TypeError, KeyError, ValidationError):
        return None


def _invalid_fields(exc: CallerError) -> list[str]:
    """Which fields failed, without their values: a body may carry anything."""
    cause = exc.__cause__
    if not isinstance(cause, ValidationError):
        return ["body"]
    return sorted({".".join(map(str, e["loc"])) or "body" for e in cause.errors()})


def _delivery_count(delivery: Delivery) -> int:
    value = (delivery.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    return value if isinstance(value, int) else 0
