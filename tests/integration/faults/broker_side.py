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
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
        check=True,
    )
    return done.stdout


def connections_named(fragment: str) -> list[str]:
    """Broker pids of the connections whose client name holds ``fragment``;
    ``close_connection`` takes the pid, not the connection's display name."""
    pids = []
    for line in _ctl("list_connections", "pid", "client_properties").splitlines():
        pid, _, properties = line.partition("\t")
        if fragment in properties and "connection_name" in properties:
            pids.append(pid)
    return pids


def close_connections(fragment: str) -> int:
    """Close, from the broker, every connection whose client name holds it."""
    pids = connections_named(fragment)
    for pid in pids:
        _ctl("close_connection", pid, "fault test")
    return len(pids)


async def close_connections_async(fragment: str) -> int:
    return await asyncio.to_thread(close_connections, fragment)


def _get_env(key: str) -> str:
    answer = _ctl("eval", f"application:get_env(rabbit, {key}).").strip()
    # {ok,1800000} or undefined
    return answer[4:-1] if answer.startswith("{ok,") else "undefined"


def _set_env(key: str, value: str) -> None:
    if value == "undefined":
        _ctl("eval", f"application:unset_env(rabbit, {key}).")
    else:
        _ctl("eval", f"application:set_env(rabbit, {key}, {value}).")


@contextlib.asynccontextmanager
async def short_consumer_timeout(milliseconds: int) -> AsyncIterator[None]:
    """The broker's global consumer timeout (and the channel tick that checks it)
    lowered for the block only; always restored, since other tests share it."""
    keys = {"consumer_timeout": str(milliseconds), "channel_tick_interval": "500"}
    previous = {key: await asyncio.to_thread(_get_env, key) for key in keys}
    try:
        for key, value in keys.items():
            await asyncio.to_thread(_set_env, key, value)
        yield
    finally:
        for key, value in previous.items():
            await asyncio.to_thread(_set_env, key, value)
