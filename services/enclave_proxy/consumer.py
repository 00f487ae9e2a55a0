"""The subscription to the jobs queue: start, stop, prefetch and in-flight jobs.

Each delivery runs in a task of its own so the channel keeps reading while jobs
run; the prefetch bounds how many run at once. RabbitMQ applies a per-consumer
``basic.qos`` only to consumers created after it, so a new prefetch means
cancelling the consumer and consuming again. Unacked deliveries survive the
cancel and are still settled on the same channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from services.enclave_proxy.jobs import SETTLE_ERRORS, Delivery
from shared.logging import get_logger

log = get_logger(__name__)

Handler = Callable[[Delivery], Coroutine[Any, Any, Any]]


class JobConsumer:
    """Consumes the jobs queue while told to, and tracks the jobs it started."""

    def __init__(
        self, channel: AbstractChannel, queue: AbstractQueue, handler: Handler
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._tag: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.prefetch = 0

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self, prefetch: int) -> None:
        """Consume with this prefetch; a running consumer with another is redone."""
        async with self._lock:
            if self._tag is not None and prefetch == self.prefetch:
                return
            await self._cancel()
            await self._channel.set_qos(prefetch_count=prefetch)
            self._tag = await self._queue.consume(self._on_message, no_ack=False)
            self.prefetch = prefetch
            log.info("consumer_started", queue=self._queue.name, prefetch=prefetch)

    async def stop(self) -> None:
        """Stop taking new deliveries; jobs already running carry on."""
        async with self._lock:
            if self._tag is not None:
                await self._cancel()
                log.info("consumer_stopped", queue=self._queue.name)

    async def _cancel(self) -> None:
        tag, self._tag = self._tag, None
        if tag is None:
            return
        try:
            await self._queue.cancel(tag)
        except SETTLE_ERRORS as exc:
            # The channel is already gone, and the consumer with it.
            log.warning("consumer_cancel_failed", error=type(exc).__name__)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(self._handler(message))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_crashed", error=repr(task.exception()))

    async def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for running jobs, then cancel the rest.

        Returns how many were cancelled; each cancelled job nacks its delivery
        with requeue on its way out.
        """
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return len(pending)
