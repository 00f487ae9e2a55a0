"""Fixtures for the enclave proxy against real RabbitMQ and moto's S3.

``FakeWorker`` is a link server on 127.0.0.1 that speaks the worker's side of
the enclave protocol and answers as each test directs; ``proxy_factory`` starts
proxies wired to it, to a random topology on the local broker and to a moto
bucket, and stops them at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from services.enclave_proxy.service import ProxyService
from services.enclave_proxy.settings import ProxySettings
from shared.broker import JOBS_ROUTING_KEY, Topology, declare, delete
from shared.enclave_protocol import HandedCredentials, WorkerStatus
from shared.errors import Reason
from shared.link import (
    Control,
    ErrorInfo,
    FrameType,
    JobHeader,
    ResultHeader,
    Role,
    TcpTransport,
    server_hello,
)
from shared.messages import JobMessage, ResultMessage, parse_result
from standins.moto_server import MotoServer

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BUCKET = "obscura-proxy-tests"
WORKER_SECRET = "worker-secret-never-logged"
MODEL_SHA = "cd" * 32

pytestmark = pytest.mark.integration


@dataclass
class FakeWorker:
    """The worker's side of the link, with behaviour the test can change."""

    ready: bool = True
    slots: int = 1
    job_delay_s: float = 0.0
    error: ErrorInfo | None = None
    jobs: list[JobHeader] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    credentials: list[HandedCredentials] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> FakeWorker:
        self.server = await TcpTransport("127.0.0.1", 0).serve(self._serve)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async with await server_hello(reader, writer, role=Role.WORKER) as link:
            frame = await link.read_frame()
            if frame.type is FrameType.CONTROL:
                reply = self._control(Control.from_frame(frame))
                await link.write_frame(reply.to_frame(FrameType.CONTROL_REPLY))
                return
            header = JobHeader.from_frame(frame)
            self.jobs.append(header)
            self.bodies.append(await link.read_body(expected_size=header.body_size))
            await asyncio.sleep(self.job_delay_s)
            error = self.error_for(header.job_id)
            if error is not None:
                await link.send_error(error)
                return
            sealed = b"sealed-prediction:" + header.job_id.encode()
            result = ResultHeader(
                job_id=header.job_id,
                body_size=len(sealed),
                receipt=json.dumps({"format": "obscura-receipt/1"}).encode(),
                attributes={
                    "model_name": "nyu",
                    "model_version": "demo-1",
                    "model_sha256": MODEL_SHA,
                    "timings": json.dumps({"infer": 0.01}),
                },
            )
            await link.send_result(result, [sealed])

    def error_for(self, job_id: str) -> ErrorInfo | None:
        """The ERROR to answer this job with, if any; subclasses pick per job."""
        return self.error

    def _control(self, request: Control) -> Control:
        if request.op == "credentials":
            self.credentials.append(HandedCredentials.from_fields(request.fields))
            return Control("credentials", {"ok": True})
        status = WorkerStatus(
            ready=self.ready,
            reason=None if self.ready else "model_locked",
            slots=self.slots,
            has_credentials=bool(self.credentials),
        )
        return Control("status", status.to_fields())


def worker_error(reason: Reason, retryable: bool) -> ErrorInfo:
    return ErrorInfo(reason, f"the test made the worker fail: {reason}", retryable)


@pytest.fixture
async def fake_worker() -> AsyncIterator[FakeWorker]:
    worker = await FakeWorker().start()
    yield worker
    await worker.stop()


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(AMQP_URL, timeout=5)
    yield connection
    await connection.close()


@dataclass
class Broker:
    """A random topology on the local broker, and helpers to drive it."""

    topology: Topology
    channel: aio_pika.abc.AbstractChannel
    declared: Any

    async def publish_job(self, body: bytes, message_id: str) -> None:
        message = aio_pika.Message(
            body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await self.declared.jobs.publish(message, routing_key=JOBS_ROUTING_KEY)

    async def results(self, count: int, timeout_s: float = 8.0) -> list[ResultMessage]:
        found: list[ResultMessage] = []
        async with asyncio.timeout(timeout_s):
            while len(found) < count:
                message = await self.declared.results_queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                found.append(parse_result(message.body))
        return found

    async def dead_letter(self, timeout_s: float = 8.0) -> bytes:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.declared.dead_letter_queue.get(fail=False)
                if message is not None:
                    await message.ack()
                    return bytes(message.body)
                await asyncio.sleep(0.05)

    async def jobs_waiting(self) -> int:
        # A robust channel caches declared queues, and with them a stale count.
        underlay = await self.channel.get_underlay_channel()
        declared = await underlay.queue_declare(self.topology.jobs_queue, passive=True)
        return int(declared.message_count or 0)


@pytest.fixture
async def broker(
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[Broker]:
    topology = Topology.prefixed(f"test-proxy-{uuid.uuid4().hex[:8]}", delivery_limit=2)
    channel = await amqp.channel()
    declared = await declare(channel, topology)
    yield Broker(topology, channel, declared)
    await delete(channel, topology)
    await channel.close()


@dataclass
class Bucket:
    client: Any

    async def put(self, key: str, body: bytes) -> None:
        await self.client.put_object(Bucket=BUCKET, Key=key, Body=body)


@pytest.fixture
async def bucket(moto_server: MotoServer) -> AsyncIterator[Bucket]:
    config = AioConfig(connect_timeout=3, read_timeout=10)
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_server.url,
        aws_access_key_id="AKIAPROXYTEST",
        aws_secret_access_key="proxy-test",
        config=config,
    ) as client:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            await client.create_bucket(Bucket=BUCKET)
        yield Bucket(client)


def job_for(body: bytes, key: str, **overrides: Any) -> JobMessage:
    fields: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "tenant": "st-mary",
        "bucket": BUCKET,
        "object_key": key,
        "sealed_size": len(body),
        "sealed_sha256": hashlib.sha256(body).hexdigest(),
        "view": "L-CC",
        "model": "nyu-gmic",
        "nonce": "a1b2c3d4",
        "created_at": datetime.now(UTC),
    }
    return JobMessage(**(fields | overrides))


ProxyFactory = Callable[..., Awaitable[ProxyService]]


@pytest.fixture
async def proxy_factory(
    broker: Broker, moto_server: MotoServer
) -> AsyncIterator[ProxyFactory]:
    started: list[ProxyService] = []

    async def start(worker: FakeWorker, **overrides: Any) -> ProxyService:
        fields: dict[str, Any] = {
            "amqp_url": AMQP_URL,
            "topology_prefix": broker.topology.jobs_exchange.removesuffix(".jobs"),
            "delivery_limit": broker.topology.delivery_limit,
            "s3_endpoint_url": moto_server.url,
            "s3_access_key_id": "AKIAPROXYTEST",
            "s3_secret_access_key": "proxy-test",
            "s3_piece_bytes": 64 * 1024,
            "worker_transport": "tcp",
            "worker_port": worker.port,
            "relay_transport": "tcp",
            "relay_port": 0,
            "kms_upstream_host": "127.0.0.1",
            "kms_upstream_port": 9,
            "worker_access_key_id": "AKIAENCLAVEDEV",
            "worker_secret_access_key": WORKER_SECRET,
            "status_interval_s": 0.1,
            "status_timeout_s": 2.0,
            "retry_base_delay_s": 0.02,
            "retry_max_delay_s": 0.05,
            "shutdown_grace_s": 2.0,
            "health_port": 0,
        }
        service = ProxyService(ProxySettings(**(fields | overrides)))
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition the code under test offers no event for."""
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)
