"""Results consumers on poison and invalid results: no job left in flight."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from services.results.consumers import Consumers
from services.results.handlers import (
    INTERNAL_FAILURE,
    INVALID_RESULT,
    Disposition,
    MessageHandler,
)
from shared.broker import Topology

pytestmark = pytest.mark.timeout(10)


@dataclass
class FakeStore:
    """Job states by id, with the forward-only moves the real store makes."""

    status: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    fail_marking: bool = False

    async def ensure(self, tenant: str, job_id: str, model: str) -> bool:
        created = job_id not in self.status
        self.status.setdefault(job_id, "received")
        return created

    async def mark_running(self, tenant: str, job_id: str, at: datetime) -> bool:
        return self._move(job_id, "running")

    async def mark_failed(
        self, tenant: str, job_id: str, reason: str, message: str, at: datetime
    ) -> bool:
        if self.fail_marking:
            raise RuntimeError("the test made marking fail")
        moved = self._move(job_id, "failed")
        if moved:
            self.reasons[job_id] = reason
        return moved

    def _move(self, job_id: str, target: str) -> bool:
        if self.status.get(job_id) in ("succeeded", "failed"):
            return False
        self.status[job_id] = target
        return True


def _result(job_id: str, **fields: Any) -> bytes:
    body = {
        "version": 1,
        "job_id": job_id,
        "tenant": "st-marys",
        "status": "succeeded",
        "at": datetime.now(UTC).isoformat(),
    } | fields
    return json.dumps(body).encode()


async def test_faults_results_invalid_succeeded_result_fails_running_job() -> None:
    store, job_id = FakeStore(), str(uuid.uuid4())
    store.status[job_id] = "running"
    handler = MessageHandler(store)  # type: ignore[arg-type]
    body = _result(
        job_id,
        sealed_result="bm90LXNlYWxlZA==",
        sealed_result_sha256="0" * 64,
        receipt={},
        model={"name": "nyu", "version": "1", "sha256": "a" * 64},
    )
    assert await handler.on_result(body) is Disposition.APPLIED
    assert store.status[job_id] == "failed"
    assert store.reasons[job_id] == INVALID_RESULT


async def test_faults_results_invalid_success_leaves_a_finished_job_alone() -> None:
    store, job_id = FakeStore(), str(uuid.uuid4())
    store.status[job_id] = "succeeded"
    handler = MessageHandler(store)  # type: ignore[arg-type]
    assert await handler.on_result(_result(job_id)) is Disposition.MALFORMED
    assert store.status[job_id] == "succeeded"


@dataclass
class FakeMessage:
    body: bytes
    redelivered: bool
    delivery_tag: int = 1
    settled: list[tuple[str, bool]] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append(("ack", False))

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(("nack", requeue))


class Exploding(MessageHandler):
    async def on_result(self, body: bytes) -> Disposition:
        raise ValueError("the test made the handler fail")


def _consumers(store: FakeStore) -> Consumers:
    handler = Exploding(store)  # type: ignore[arg-type]
    return Consumers(handler, "amqp://127.0.0.1/", Topology(), requeue_backoff_s=0)


async def _deliver(consumers: Consumers, message: FakeMessage) -> str:
    handler = consumers._handler
    return await consumers._deliver(message, handler.on_result)  # type: ignore[arg-type]


async def test_faults_results_unexpected_error_twice_fails_the_job() -> None:
    store, job_id = FakeStore(), str(uuid.uuid4())
    store.status[job_id] = "running"
    consumers = _consumers(store)
    first = FakeMessage(_result(job_id), redelivered=False)
    second = FakeMessage(_result(job_id), redelivered=True)

    assert await _deliver(consumers, first) == "requeued"
    assert await _deliver(consumers, second) == "failed"
    assert first.settled == [("nack", True)]
    assert second.settled == [("ack", False)]
    assert (store.status[job_id], store.reasons[job_id]) == ("failed", INTERNAL_FAILURE)


async def test_faults_results_message_is_kept_when_failing_the_job_fails() -> None:
    store, job_id = FakeStore(fail_marking=True), str(uuid.uuid4())
    store.status[job_id] = "running"
    message = FakeMessage(_result(job_id), redelivered=True)
    assert await _deliver(_consumers(store), message) == "requeued"
    assert message.settled == [("nack", True)]
    assert store.status[job_id] == "running"


async def test_faults_results_readiness_is_false_while_disconnected() -> None:
    consumers = _consumers(FakeStore())

    class Channel:
        is_closed = False

    class Connection:
        connected = asyncio.Event()

    consumers._connection = Connection()  # type: ignore[assignment]
    consumers._channel = Channel()  # type: ignore[assignment]
    consumers._tags = [(object(), "a"), (object(), "b")]  # type: ignore[list-item]
    assert not consumers.running
    Connection.connected.set()
    assert consumers.running
