from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from services.enclave_proxy.service import BrokerLink, ProxyService
from services.enclave_proxy.settings import ProxySettings
from shared.enclave_protocol import JobOutcome, WorkerStatus
from shared.link import TcpTransport
from tests.unit.proxy_fakes import (
    FakeDelivery,
    FakeObjects,
    FakeWorker,
    job_message,
    outcome,
    wait_until,
)

SEALED = b"sealed"


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


class FakeConnection:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.connected = asyncio.Event()
        self.connected.set()

    async def close(self) -> None:
        self.rec.events.append("connection.close")


class FakeChannel:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def set_qos(self, prefetch_count: int) -> None:
        self.rec.events.append(f"qos {prefetch_count}")

    async def close(self) -> None:
        self.rec.events.append("channel.close")


class FakeQueue:
    name = "jobs"

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.callback: Callable[[Any], Coroutine[Any, Any, None]] | None = None

    async def consume(self, callback: Any, no_ack: bool) -> str:
        assert no_ack is False
        self.callback = callback
        self.rec.events.append("consume")
        return "ctag"

    async def cancel(self, tag: str) -> None:
        self.rec.events.append("cancel")


class FakeExchange:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    async def publish(self, message: Any, **_: Any) -> Any:
        import aiormq

        self.rec.events.append("publish")
        return aiormq.spec.Basic.Ack()


class GatedWorker(FakeWorker):
    def __init__(self, rec: Recorder, gate: asyncio.Event) -> None:
        super().__init__(WorkerStatus(ready=True, slots=3, has_credentials=True))
        self.rec = rec
        self.gate = gate
        self.started = asyncio.Event()

    async def run_job(self, *args: Any, **kwargs: Any) -> JobOutcome:
        self.started.set()
        await self.gate.wait()
        return outcome()


class RecordingDelivery(FakeDelivery):
    rec: Recorder | None = None

    async def _record(self, action: str, requeue: bool) -> None:
        assert self.rec is not None
        self.rec.events.append(f"{action}{' requeue' if requeue else ''}")


async def _service(
    rec: Recorder, worker: FakeWorker, grace_s: float
) -> tuple[ProxyService, FakeQueue, FakeObjects]:
    settings = ProxySettings(
        worker_transport="tcp",
        relay_transport="tcp",
        relay_port=0,
        health_port=0,
        kms_upstream_host="127.0.0.1",
        worker_access_key_id="AKIADEV",
        worker_secret_access_key="dev-secret",
        shutdown_grace_s=grace_s,
        status_interval_s=0.05,
    )
    queue = FakeQueue(rec)

    async def open_link(_: ProxySettings) -> BrokerLink:
        return BrokerLink(
            FakeConnection(rec),  # type: ignore[arg-type]
            FakeChannel(rec),  # type: ignore[arg-type]
            queue,  # type: ignore[arg-type]
            FakeExchange(rec),  # type: ignore[arg-type]
        )

    objects = FakeObjects()
    service = ProxyService(
        settings,
        worker=worker,
        objects=objects,
        relay=TcpTransport("127.0.0.1", 0),
        open_broker_link=open_link,
    )
    for part, name in ((service.relay, "relay"), (service.health, "health")):
        _record_stop(part, name, rec)
    return service, queue, objects


def _record_stop(part: Any, name: str, rec: Recorder) -> None:
    original = part.stop

    async def stop(*args: Any) -> None:
        rec.events.append(f"{name}.stop")
        await original(*args)

    part.stop = stop


async def _start_one_job(
    rec: Recorder, worker: GatedWorker, grace_s: float
) -> ProxyService:
    service, queue, objects = await _service(rec, worker, grace_s)
    await service.start()
    await wait_until(lambda: queue.callback is not None)
    job = job_message(SEALED)
    objects.objects[(job.bucket, job.object_key)] = SEALED
    delivery = RecordingDelivery(job.model_dump_json().encode())
    delivery.rec = rec
    await queue.callback(delivery)
    await asyncio.wait_for(worker.started.wait(), 5)
    return service


async def test_proxy_service_stop_lets_inflight_job_finish_before_closing() -> None:
    rec, gate = Recorder(), asyncio.Event()
    worker = GatedWorker(rec, gate)
    service = await _start_one_job(rec, worker, grace_s=5)
    assert service.readiness().ready

    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0.05)
    assert not service.readiness().ready
    gate.set()
    await stopping

    tail = rec.events[rec.events.index("cancel") :]
    assert tail == [
        "cancel",
        "publish",
        "ack",
        "channel.close",
        "connection.close",
        "relay.stop",
        "health.stop",
    ]


async def test_proxy_service_stop_requeues_jobs_past_the_grace_period() -> None:
    rec = Recorder()
    worker = GatedWorker(rec, asyncio.Event())
    service = await _start_one_job(rec, worker, grace_s=0.1)

    await service.stop()

    tail = rec.events[rec.events.index("cancel") :]
    assert tail == [
        "cancel",
        "nack requeue",
        "channel.close",
        "connection.close",
        "relay.stop",
        "health.stop",
    ]
    assert service.metrics.jobs.labels(outcome="abandoned")._value.get() == 1


async def test_proxy_service_not_ready_worker_stops_consuming() -> None:
    rec = Recorder()
    worker = FakeWorker(WorkerStatus(ready=True, slots=2, has_credentials=True))
    service, _, _ = await _service(rec, worker, grace_s=1)
    await service.start()
    try:
        await wait_until(lambda: service.readiness().ready)
        worker.status_value = WorkerStatus(ready=False, reason="model_locked", slots=2)
        await wait_until(lambda: "cancel" in rec.events)
        state = service.readiness()
        assert (state.ready, state.reason) == (False, "worker_not_ready: model_locked")
        assert rec.events[:2] == ["qos 2", "consume"]
    finally:
        await service.stop()
