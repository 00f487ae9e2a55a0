"""Faults made on the broker's side, through ``rabbitmqctl``, for this run only.

Connections are picked by the name each service gives its connection (which
carries its own topology's queue names), so only this test's services are hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator

RABBITMQCTL_TIMEOUT_S = 30


def _ctl(*args: str) -> str:
    done = subprocess.run(  # noqa: S603 - fixed tool, arguments from the test
        ["rabbitmqctl", "-q", *args],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
        check=True,
    )
    return done.stdout


def connections_named(fragment: str) -> list[str]:
    """Broker-side names of the connections whose client name holds ``fragment``."""
    names = []
    for line in _ctl("list_connections", "name", "client_properties").splitlines():
        name, _, properties = line.partition("\t")
        if fragment in properties and "connection_name" in properties:
            names.append(name)
    return names


def close_connections(fragment: str) -> int:
    """Close, from the broker, every connection whose client name holds it."""
    names = connections_named(fragment)
    for name in names:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ctl("close_connection", name, "fault test")
    return len(names)


async def close_connections_async(fragment: str) -> int:
    return await asyncio.to_thread(close_connections, fragment)


def _consumer_timeout(value: str) -> str:
    return _ctl("eval", f"application:set_env(rabbit, consumer_timeout, {value}).")


def _current_consumer_timeout() -> str:
    answer = _ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()
    # {ok,1800000} or undefined
    if answer.startswith("{ok,"):
        return answer[4:-1]
    return "undefined"


@contextlib.asynccontextmanager
async def short_consumer_timeout(milliseconds: int) -> AsyncIterator[None]:
    """The broker's global consumer timeout, lowered only while the block opens
    channels; RabbitMQ reads it when a channel opens, so the window is short."""
    previous = await asyncio.to_thread(_current_consumer_timeout)
    try:
        await asyncio.to_thread(_consumer_timeout, str(milliseconds))
        yield
    finally:
        if previous == "undefined":
            await asyncio.to_thread(
                _ctl, "eval", "application:unset_env(rabbit, consumer_timeout)."
            )
        else:
            await asyncio.to_thread(_consumer_timeout, previous)
