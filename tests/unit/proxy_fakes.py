"""Fakes at the enclave proxy's seams: deliveries, results, worker, object store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.enclave_proxy.objects import SealedObject
from shared.enclave_protocol import (
    HandedCredentials,
    JobOutcome,
    JobRequest,
    WorkerStatus,
)
from shared.errors import ObscuraError
from shared.messages import JobMessage, ResultMessage

MODEL_SHA = "ab" * 32


def job_message(body: bytes, **overrides: Any) -> JobMessage:
    fields: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "tenant": "st-mary",
        "bucket": "sealed-images",
        "object_key": "jobs/one.sealed",
        "sealed_size": len(body),
        "sealed_sha256": hashlib.sha256(body).hexdigest(),
        "view": "L-CC",
        "model": "nyu-gmic",
        "nonce": "00112233",
        "created_at": datetime.now(UTC),
    }
    return JobMessage(**(fields | overrides))


def outcome(sealed: bytes = b"sealed-prediction") -> JobOutcome:
    receipt = {"format": "obscura-receipt/1", "record": {}, "attestation_document": ""}
    return JobOutcome(
        sealed_result=sealed,
        receipt=json.dumps(receipt).encode(),
        attributes={
            "model_name": "nyu",
            "model_version": "1",
            "model_sha256": MODEL_SHA,
            "timings": json.dumps({"infer": 0.5}),
        },
    )


@dataclass
class FakeDelivery:
    body: bytes
    delivery_tag: int | None = 1
    headers: Mapping[str, Any] = field(default_factory=dict)
    settled: list[tuple[str, bool]] = field(default_factory=list)
    fail_with: Exception | None = None

    async def _record(self, action: str, requeue: bool) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.settled.append((action, requeue))

    async def ack(self, multiple: bool = False) -> None:
        await self._record("ack", False)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        await self._record("nack", requeue)

    async def reject(self, requeue: bool = False) -> None:
        await self._record("reject", requeue)


@dataclass
class FakeResults:
    published: list[ResultMessage] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)
    error: ObscuraError | None = None

    async def publish(self, result: ResultMessage) -> None:
        if result.status in self.fail_on and self.error is not None:
            raise self.error
        self.published.append(result)

    def statuses(self) -> list[str]:
        return [r.status for r in self.published]


@dataclass
class FakeObjects:
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    piece: int = 4
    error: Exception | None = None

    @contextlib.asynccontextmanager
    async def open(self, bucket: str, key: str) -> AsyncIterator[SealedObject]:
        if self.error is not None:
            raise self.error
        data = self.objects[(bucket, key)]
        yield SealedObject(len(data), self._pieces(data))

    async def _pieces(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), self.piece):
            yield data[start : start + self.piece]


@dataclass
class FakeWorker:
    status_value: WorkerStatus = field(
        default_factory=lambda: WorkerStatus(ready=True, slots=2)
    )
    status_error: Exception | None = None
    job_error: Exception | None = None
    result: JobOutcome = field(default_factory=outcome)
    handed: list[HandedCredentials] = field(default_factory=list)
    received: list[tuple[JobRequest, bytes]] = field(default_factory=list)

    async def status(self) -> WorkerStatus:
        if self.status_error is not None:
            raise self.status_error
        return self.status_value

    async def hand_credentials(self, credentials: HandedCredentials) -> None:
        self.handed.append(credentials)

    async def run_job(
        self, request: JobRequest, body: AsyncIterable[bytes], *, timeout_s: float
    ) -> JobOutcome:
        data = b"".join([piece async for piece in body])
        self.received.append((request, data))
        if self.job_error is not None:
            raise self.job_error
        return self.result


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition the code under test offers no event for."""
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)
