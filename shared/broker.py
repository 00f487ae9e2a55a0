"""RabbitMQ topology and confirmed publishing, shared by every service.

    obscura.jobs     (direct exchange) -> obscura.jobs      quorum queue, consumed
                                                            by the enclave proxies
    obscura.results  (direct exchange) -> obscura.results   quorum queue, consumed
                                                            by the results service
    obscura.dlx      (fanout exchange) -> obscura.jobs.dead quorum queue, consumed
                                                            by the results service

The jobs queue dead-letters a message that was rejected without requeue, or that
was returned more than ``delivery_limit`` times, so a job that keeps failing
transiently ends in ``obscura.jobs.dead`` and the results service marks it failed.

Every publish is persistent and mandatory and waits for the broker's confirm with
a finite timeout; a broker that cannot take the message in time is a retryable
``DependencyError``, an unroutable message a permanent one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.errors import PermanentDependencyError, Reason, RetryableDependencyError
from shared.messages import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    JOBS_EXCHANGE,
    JOBS_QUEUE,
    RESULTS_EXCHANGE,
    RESULTS_QUEUE,
)

JOBS_ROUTING_KEY = "job"
RESULTS_ROUTING_KEY = "result"


@dataclass(frozen=True)
class Topology:
    """Queue and exchange names, overridable so tests can run side by side."""

    jobs_exchange: str = JOBS_EXCHANGE
    jobs_queue: str = JOBS_QUEUE
    results_exchange: str = RESULTS_EXCHANGE
    results_queue: str = RESULTS_QUEUE
    dead_letter_exchange: str = DEAD_LETTER_EXCHANGE
    dead_letter_queue: str = DEAD_LETTER_QUEUE
    delivery_limit: int = 5

    @classmethod
    def prefixed(cls, prefix: str, **overrides: Any) -> Topology:
        names = {
            "jobs_exchange": f"{prefix}.jobs",
            "jobs_queue": f"{prefix}.jobs",
            "results_exchange": f"{prefix}.results",
            "results_queue": f"{prefix}.results",
            "dead_letter_exchange": f"{prefix}.dlx",
            "dead_letter_queue": f"{prefix}.jobs.dead",
        }
        return cls(**(names | overrides))


@dataclass(frozen=True)
class Declared:
    jobs: AbstractExchange
    results: AbstractExchange
    jobs_queue: AbstractQueue
    results_queue: AbstractQueue
    dead_letter_queue: AbstractQueue


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


async def declare(channel: AbstractChannel, topology: Topology) -> Declared:
    """Declare everything idempotently; every service calls this on (re)connect."""
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    jobs = await channel.declare_exchange(
        topology.jobs_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    results = await channel.declare_exchange(
        topology.results_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dead = await channel.declare_queue(
        topology.dead_letter_queue, durable=True, arguments=_quorum()
    )
    await dead.bind(dlx, routing_key="")
    jobs_queue = await channel.declare_queue(
        topology.jobs_queue,
        durable=True,
        arguments=_quorum(
            **{
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-delivery-limit": topology.delivery_limit,
            }
        ),
    )
    await jobs_queue.bind(jobs, routing_key=JOBS_ROUTING_KEY)
    results_queue = await channel.declare_queue(
        topology.results_queue, durable=True, arguments=_quorum()
    )
    await results_queue.bind(results, routing_key=RESULTS_ROUTING_KEY)
    return Declared(jobs, results, jobs_queue, results_queue, dead)


async def connect(
    url: str, *, timeout_s: float = 10.0, name: str | None = None
) -> AbstractRobustConnection:
    """A reconnecting connection; consumers are restored by aio-pika on reconnect.

    ``name`` becomes the connection name the broker shows (``rabbitmqctl
    list_connections client_properties``), so an operator can tell services apart.
    """
    properties: dict[str, Any] = {"connection_name": name} if name else {}
    try:
        return await aio_pika.connect_robust(
            url, timeout=timeout_s, client_properties=properties
        )
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise RetryableDependencyError(
            f"RabbitMQ at {_safe_url(url)} is unreachable: {type(exc).__name__}.",
            reason=Reason.UNAVAILABLE,
        ) from exc


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


async def publish(
    exchange: AbstractExchange,
    body: bytes,
    *,
    routing_key: str,
    message_id: str,
    timeout_s: float,
    headers: dict[str, Any] | None = None,
    priority: int = 0,
) -> None:
    """Persistent, mandatory, confirmed: returns only once the broker has it."""
    message = aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        message_id=message_id,
        headers=headers or {},
        priority=priority,
    )
    try:
        confirmation = await exchange.publish(
            message, routing_key=routing_key, mandatory=True, timeout=timeout_s
        )
    except aio_pika.exceptions.DeliveryError as exc:
        raise PermanentDependencyError(
            f"RabbitMQ could not route message {message_id} to {routing_key!r}: {exc}.",
            reason=Reason.UNAVAILABLE,
        ) from exc
    except (
        TimeoutError,
        OSError,
        aiormq.exceptions.AMQPError,
        aio_pika.exceptions.AMQPException,
        RuntimeError,
    ) as exc:
        raise RetryableDependencyError(
            f"RabbitMQ did not confirm message {message_id} within {timeout_s} s:"
            f" {type(exc).__name__}.",
            reason=Reason.UNAVAILABLE,
        ) from exc
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise RetryableDependencyError(
            f"RabbitMQ refused message {message_id} ({type(confirmation).__name__}).",
            reason=Reason.UNAVAILABLE,
        )


async def delete(channel: AbstractChannel, topology: Topology) -> None:
    """Remove a topology (tests and ``obscura dev down``); quorum queues need the
    unconditional form of queue.delete."""
    for queue in (
        topology.jobs_queue,
        topology.results_queue,
        topology.dead_letter_queue,
    ):
        await channel.queue_delete(queue, if_unused=False, if_empty=False)
    for exchange in (
        topology.jobs_exchange,
        topology.results_exchange,
        topology.dead_letter_exchange,
    ):
        await channel.exchange_delete(exchange, if_unused=False)
