"""Wiring of one enclave proxy: start in dependency order, stop in reverse.

Start: object store, broker (declare the topology), KMS relay, health server, then
the worker supervisor, whose first ready status starts the consumer. Stop: no new
deliveries, running jobs get a grace period (the rest are nacked with requeue),
then channel and connection close, and only then the relay and health server go,
because a draining job may still need KMS through the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

from services.enclave_proxy.consumer import JobConsumer
from services.enclave_proxy.health import HealthServer, Readiness, health_app
from services.enclave_proxy.jobs import SETTLE_ERRORS, BrokerResults, JobHandler
from services.enclave_proxy.metrics import ProxyMetrics
from services.enclave_proxy.objects import ObjectStore, S3Endpoint, S3ObjectStore
from services.enclave_proxy.relay import KmsRelay
from services.enclave_proxy.settings import ProxySettings
from services.enclave_proxy.worker import (
    CredentialSource,
    DefaultChainCredentials,
    StaticCredentials,
    Worker,
    WorkerSupervisor,
)
from shared.broker import connect, declare
from shared.enclave_protocol import HandedCredentials, WorkerClient, WorkerStatus
from shared.errors import ObscuraError
from shared.kms import Credentials
from shared.link import TcpTransport, Transport, VsockTransport
from shared.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class BrokerLink:
    connection: AbstractRobustConnection
    channel: AbstractChannel
    jobs_queue: AbstractQueue
    results: AbstractExchange


BrokerOpener = Callable[[ProxySettings], Awaitable[BrokerLink]]


async def open_broker(settings: ProxySettings) -> BrokerLink:
    """A robust connection, one confirming channel, the topology declared."""
    connection = await connect(
        settings.amqp_url.get_secret_value(),
        timeout_s=settings.broker_connect_timeout_s,
        name=broker_connection_name(settings),
    )
    try:
        channel = await connection.channel(publisher_confirms=True)
        declared = await declare(channel, settings.topology())
    except BaseException:
        await connection.close()
        raise
    return BrokerLink(connection, channel, declared.jobs_queue, declared.results)


def broker_connection_name(settings: ProxySettings) -> str:
    """What ``rabbitmqctl list_connections`` shows for this proxy."""
    return f"enclave-proxy {settings.topology().jobs_queue} pid {os.getpid()}"


def worker_transport(settings: ProxySettings) -> Transport:
    if settings.worker_transport == "tcp":
        return TcpTransport(
            settings.worker_host,
            settings.worker_port,
            connect_timeout=settings.status_timeout_s,
        )
    return VsockTransport.to_enclave(settings.worker_cid, settings.worker_port)


def relay_transport(settings: ProxySettings) -> Transport:
    if settings.relay_transport == "tcp":
        return TcpTransport("127.0.0.1", settings.relay_port)
    return VsockTransport.listening(settings.relay_port)


def credential_source(settings: ProxySettings) -> CredentialSource:
    key_id, secret = settings.worker_access_key_id, settings.worker_secret_access_key
    if key_id is None or secret is None:
        return DefaultChainCredentials()
    return StaticCredentials(
        HandedCredentials(key_id.get_secret_value(), secret.get_secret_value())
    )


def _s3_credentials(settings: ProxySettings) -> Credentials | None:
    key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    if key_id is None or secret is None:
        return None
    return Credentials(key_id.get_secret_value(), secret.get_secret_value())


class ProxyService:
    """One proxy: its broker link, consumer, supervisor, relay and health server."""

    def __init__(
        self,
        settings: ProxySettings,
        *,
        worker: Worker | None = None,
        credentials: CredentialSource | None = None,
        objects: ObjectStore | None = None,
        relay: Transport | None = None,
        open_broker_link: BrokerOpener = open_broker,
    ) -> None:
        self._settings = settings
        self._worker = worker or WorkerClient(worker_transport(settings))
        self._credentials = credentials or credential_source(settings)
        self._objects = objects
        self._open_broker = open_broker_link
        self.metrics = ProxyMetrics()
        self.relay = KmsRelay(
            relay or relay_transport(settings),
            settings.kms_upstream(),
            max_connections=settings.relay_max_connections,
            idle_timeout_s=settings.relay_idle_timeout_s,
        )
        self.metrics.watch_relay(lambda: self.relay.active)
        self.supervisor = WorkerSupervisor(
            self._worker,
            self._credentials,
            on_status=self._on_status,
            interval_s=settings.status_interval_s,
            timeout_s=settings.status_timeout_s,
            refresh_margin_s=settings.credentials_refresh_margin_s,
        )
        self.health = HealthServer(
            health_app(self.readiness, self.metrics),
            host=settings.health_host,
            port=settings.health_port,
        )
        self._exit = contextlib.AsyncExitStack()
        self._broker: BrokerLink | None = None
        self.consumer: JobConsumer | None = None
        self._supervising: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        objects = self._objects or await self._open_objects()
        self._broker = await self._open_broker(self._settings)
        handler = JobHandler(
            self._worker,
            objects,
            BrokerResults(
                self._broker.results, timeout_s=self._settings.publish_timeout_s
            ),
            self.metrics,
            job_timeout_s=self._settings.job_timeout_s,
            retry=self._settings.retry_policy(),
        )
        self.consumer = JobConsumer(
            self._broker.channel, self._broker.jobs_queue, handler.handle
        )
        await self.relay.start()
        await self.health.start()
        self._supervising = asyncio.create_task(self.supervisor.run())
        log.info("proxy_started", health_port=self.health.port)

    async def _open_objects(self) -> ObjectStore:
        settings = self._settings
        endpoint = S3Endpoint(
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
        )
        opening = S3ObjectStore.connect(
            endpoint, _s3_credentials(settings), piece_bytes=settings.s3_piece_bytes
        )
        store: S3ObjectStore = await self._exit.enter_async_context(opening)
        return store

    async def stop(self) -> None:
        """Graceful shutdown; safe to call once after ``start``, even half-done."""
        self._stopping = True
        if self._supervising is not None:
            self._supervising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervising
        if self.consumer is not None:
            await self.consumer.stop()
            abandoned = await self.consumer.drain(self._settings.shutdown_grace_s)
            log.info("jobs_drained", requeued=abandoned)
        if self._broker is not None:
            await self._close_broker(self._broker)
        await self.relay.stop()
        await self.health.stop()
        await self._exit.aclose()
        log.info("proxy_stopped")

    async def _close_broker(self, broker: BrokerLink) -> None:
        with contextlib.suppress(*SETTLE_ERRORS):
            await broker.channel.close()
        with contextlib.suppress(*SETTLE_ERRORS):
            await broker.connection.close()

    def readiness(self) -> Readiness:
        if self._stopping:
            return Readiness(False, "shutting_down")
        if self._broker is None or self.consumer is None:
            return Readiness(False, "starting")
        if not self._broker.connection.connected.is_set():
            return Readiness(False, "broker_disconnected")
        if getattr(self._broker.channel, "is_closed", False):
            # The broker closed the channel alone (consumer timeout, a channel
            # error); aio-pika reopens it and restores the consumer.
            return Readiness(False, "channel_closed")
        status = self.supervisor.status
        if status is None:
            return Readiness(False, "worker_unreachable")
        if not status.ready:
            return Readiness(False, f"worker_not_ready: {status.reason or 'unknown'}")
        if not self.consumer.consuming:
            return Readiness(False, "not_consuming")
        return Readiness(True)

    async def _on_status(self, status: WorkerStatus | None) -> None:
        """Consume only while the worker is ready and the broker connected."""
        ready = status is not None and status.ready
        self.metrics.worker_ready.set(1 if ready else 0)
        broker, consumer = self._broker, self.consumer
        if self._stopping or broker is None or consumer is None:
            return
        if not broker.connection.connected.is_set():
            # aio-pika restores the consumer by itself once it reconnects.
            return
        try:
            if status is not None and status.ready:
                await consumer.start(max(1, status.slots))
            else:
                await consumer.stop()
        except (*SETTLE_ERRORS, ObscuraError, TimeoutError) as exc:
            log.warning("consumer_change_failed", error=type(exc).__name__)
