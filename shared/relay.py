"""Byte-for-byte relays for the enclave's KMS traffic.

Two ends of one tunnel, both built on ``relay_connection``:

- on the parent, the enclave proxy accepts the worker's connections (vsock in
  production) and connects each to the one allow-listed KMS endpoint;
- inside the enclave, the worker listens on loopback TCP for its HTTP client and
  carries each connection to the proxy over the link transport.

The bytes are not inspected: in production they are TLS between the enclave and
KMS, so the parent sees only ciphertext. A semaphore bounds concurrent
connections; a connection past the bound waits, it is not dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from shared.logging import get_logger

log = get_logger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[], Awaitable[Streams]]

PIECE = 32 * 1024


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_timeout_s: float
) -> int:
    moved = 0
    while True:
        piece = await asyncio.wait_for(reader.read(PIECE), idle_timeout_s)
        if not piece:
            break
        writer.write(piece)
        await writer.drain()
        moved += len(piece)
    if writer.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
    return moved


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


class Relay:
    """Relays each accepted connection to a fresh upstream connection."""

    def __init__(
        self,
        connect_upstream: Connector,
        *,
        name: str,
        max_connections: int = 32,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self._connect = connect_upstream
        self._name = name
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self.active = 0
        self.total = 0
        self._running: set[asyncio.Task[None]] = set()

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async with self._slots:
            self.active += 1
            self.total += 1
            # The relaying runs in its own task so that ``aclose`` can end it
            # without cancelling the server's handler task itself.
            work = asyncio.create_task(self._relay(reader, writer))
            self._running.add(work)
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                # Only a server shutting down cancels a connection handler, and
                # nothing awaits it: end quietly rather than leave a cancelled
                # task for asyncio to report as an error in its callback.
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            finally:
                self._running.discard(work)
                self.active -= 1
                await _close(writer)

    async def aclose(self) -> None:
        """End every relayed connection; new ones can still be accepted."""
        for work in list(self._running):
            work.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                self._connect(), self._connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            log.warning("relay upstream unreachable", relay=self._name, error=str(exc))
            return
        try:
            await asyncio.gather(
                _pump(reader, up_writer, self._idle_timeout_s),
                _pump(up_reader, writer, self._idle_timeout_s),
            )
        except asyncio.CancelledError:
            log.debug("relay connection closed by shutdown", relay=self._name)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            log.info(
                "relay connection ended", relay=self._name, error=type(exc).__name__
            )
        finally:
            await _close(up_writer)


def tcp_connector(host: str, port: int) -> Connector:
    """The single allow-listed upstream: nothing in the traffic can change it."""

    async def connect() -> Streams:
        return await asyncio.open_connection(host, port)

    return connect
