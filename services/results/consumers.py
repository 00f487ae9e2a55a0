"""aio-pika consumers of the results queue and the dead-letter queue.

Manual acks, sent only after the handler's transaction committed. A database that
is down is a retryable error: the message is nacked with requeue after a backoff,
never lost. An unexpected error is requeued once (``redelivered`` is False); the
second time the job the message names is marked failed and the message acked, so
a poison message can neither loop nor leave its job in flight. Should even that
fail, the message goes back after the backoff rather than be dropped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from services.results.handlers import Disposition, MessageHandler
from services.results.metrics import Metrics
from shared.broker import Topology, connect, declare
from shared.errors import RETRYABLE
from shared.logging import bind_context, get_logger, unbind_context

log = get_logger(__name__)

Handle = Callable[[bytes], Awaitable[Disposition]]


class Consumers:
    """Both consumers on one channel of one robust connection."""

    def __init__(
        self,
        handler: MessageHandler,
        amqp_url: str,
        topology: Topology,
        *,
        prefetch: int = 32,
        requeue_backoff_s: float = 1.0,
    ) -> None:
        self._handler = handler
        self._url = amqp_url
        self._topology = topology
        self._prefetch = prefetch
        self._backoff_s = requeue_backoff_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._tags: list[tuple[AbstractQueue, str]] = []
        self.metrics: Metrics | None = None

    @property
    def connection_name(self) -> str:
        """What ``rabbitmqctl list_connections`` shows for these consumers."""
        return f"results {self._topology.results_queue} pid {os.getpid()}"

    @property
    def running(self) -> bool:
        """True while both consumers are registered on an open channel of a
        connected connection; false while aio-pika reconnects and restores."""
        connection, channel = self._connection, self._channel
        if connection is None or channel is None or len(self._tags) != 2:
            return False
        return connection.connected.is_set() and not channel.is_closed

    async def start(self) -> None:
        self._connection = await connect(self._url, name=self.connection_name)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        declared = await declare(channel, self._topology)
        self._channel = channel
        for queue, handle in (
            (declared.results_queue, self._handler.on_result),
            (declared.dead_letter_queue, self._handler.on_dead_letter),
        ):
            tag = await queue.consume(self._callback(queue.name, handle), no_ack=False)
            self._tags.append((queue, tag))
        log.info("consumers started", queues=[q.name for q, _ in self._tags])

    async def stop(self) -> None:
        for queue, tag in self._tags:
            await queue.cancel(tag)
        self._tags.clear()
        if self._connection is not None:
            await self._connection.close()
        self._connection = None
        self._channel = None

    def _callback(
        self, queue: str, handle: Handle
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            bind_context(delivery_tag=message.delivery_tag)
            try:
                disposition = await self._deliver(message, handle)
            finally:
                unbind_context("delivery_tag")
            if self.metrics is not None:
                self.metrics.messages.labels(queue, disposition).inc()

        return on_message

    async def _deliver(self, message: AbstractIncomingMessage, handle: Handle) -> str:
        """Handle, then ack; returns what happened, for the metrics."""
        try:
            disposition = await handle(message.body)
        except RETRYABLE as exc:
            log.warning("requeueing message", error=str(exc), delay_s=self._backoff_s)
            await asyncio.sleep(self._backoff_s)
            await message.nack(requeue=True)
            return "requeued"
        except Exception:
            log.exception("message handler failed", redelivered=message.redelivered)
            if not message.redelivered:
                await message.nack(requeue=True)
                return "requeued"
            return await self._give_up(message)
        await message.ack()
        return disposition.value

    async def _give_up(self, message: AbstractIncomingMessage) -> str:
        """Second failure of one message: fail its job, then ack."""
        try:
            await self._handler.on_unhandled(message.body)
        except Exception:
            log.exception("failing the job failed too", delay_s=self._backoff_s)
            await asyncio.sleep(self._backoff_s)
            await message.nack(requeue=True)
            return "requeued"
        await message.ack()
        return "failed"
