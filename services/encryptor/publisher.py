"""Confirmed publishing of ``JobMessage`` bodies, with a bounded wait.

The connection is opened lazily and reopened after a failure, so an encryptor
started while the broker is down still serves (and refuses jobs with 503) and
recovers without a restart. Every step, connecting included, has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from shared import broker
from shared.errors import DependencyError, Reason, RetryableDependencyError
from shared.logging import get_logger
from shared.messages import JobMessage

log = get_logger(__name__)

_OPEN_FAILURES = (
    TimeoutError,
    OSError,
    RuntimeError,
    aiormq.exceptions.AMQPError,
)


class BrokerUnavailableError(RetryableDependencyError):
    """The broker did not take a job message in time, or refused it."""


class JobPublisher(Protocol):
    async def publish(self, message: JobMessage) -> None:
        """Return once the broker confirmed the message; raise otherwise."""
        ...

    async def check(self) -> None: ...

    async def close(self) -> None: ...


class AmqpJobPublisher:
    """``JobPublisher`` over one aio-pika channel with publisher confirms."""

    def __init__(
        self,
        url: str,
        topology: broker.Topology,
        *,
        connect_timeout_s: float,
        publish_timeout_s: float,
    ) -> None:
        self._url = url
        self._topology = topology
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def publish(self, message: JobMessage) -> None:
        exchange = await self._ready_exchange()
        try:
            await broker.publish(
                exchange,
                message.model_dump_json().encode(),
                routing_key=broker.JOBS_ROUTING_KEY,
                message_id=message.job_id,
                timeout_s=self._publish_timeout_s,
                priority=1 if message.priority == "stat" else 0,
            )
        except DependencyError as exc:
            raise BrokerUnavailableError(str(exc), reason=exc.reason) from exc

    async def check(self) -> None:
        await self._ready_exchange()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            await connection.close()

    async def _ready_exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                assert self._exchange is not None
                return self._exchange
            await self._discard()
            try:
                return await asyncio.wait_for(self._open(), self._connect_timeout_s)
            except DependencyError as exc:
                await self._discard()
                raise BrokerUnavailableError(str(exc), reason=exc.reason) from exc
            except _OPEN_FAILURES as exc:
                await self._discard()
                raise BrokerUnavailableError(
                    f"RabbitMQ did not open a channel within"
                    f" {self._connect_timeout_s} s ({type(exc).__name__});"
                    " check the broker.",
                    reason=Reason.UNAVAILABLE,
                ) from exc

    async def _discard(self) -> None:
        """Drop a half-open connection; a broker that is gone cannot fail this."""
        with contextlib.suppress(*_OPEN_FAILURES):
            await self.close()

    async def _open(self) -> AbstractExchange:
        connection = await broker.connect(self._url, timeout_s=self._connect_timeout_s)
        self._connection = connection
        channel = await connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        declared = await broker.declare(channel, self._topology)
        self._channel, self._exchange = channel, declared.jobs
        log.info("broker_connected", exchange=declared.jobs.name)
        return declared.jobs
