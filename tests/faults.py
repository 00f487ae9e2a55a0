"""A TCP proxy on 127.0.0.1 that can cut, stall or slow one link, for fault tests.

Put it between a service and RabbitMQ, PostgreSQL, S3, KMS, or between the
enclave proxy and its worker::

    async with FaultyLink("127.0.0.1", 5672) as link:
        connect_to(f"127.0.0.1:{link.port}")
        link.cut()       # reset every open connection, refuse new ones
        link.stall()     # keep connections open but move no bytes
        link.slow(1024)  # at most this many bytes per second each way
        link.restore()   # back to a clean pass-through

Only loopback upstreams are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from types import TracebackType


class FaultyLink:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        if not ipaddress.ip_address(upstream_host).is_loopback:
            raise ValueError(
                f"FaultyLink only proxies to loopback, not {upstream_host}"
            )
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._connections: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = (
            set()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._rate: int | None = None
        self.port = 0
        self.accepted = 0

    async def start(self) -> FaultyLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> FaultyLink:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def is_cut(self) -> bool:
        return self._refusing

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``restore``."""
        self._refusing = True
        for client, upstream in list(self._connections):
            for writer in (client, upstream):
                _reset(writer)
        self._connections.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def slow(self, bytes_per_second: int) -> None:
        self._rate = max(1, bytes_per_second)

    def restore(self) -> None:
        self._refusing = False
        self._rate = None
        self._flowing.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._refusing:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._connections.add(pair)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            self._connections.discard(pair)
            for side in pair:
                side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                await self._flowing.wait()
                piece = await reader.read(1024 if self._rate else 65536)
                if not piece:
                    break
                await self._flowing.wait()
                if self._rate:
                    await asyncio.sleep(len(piece) / self._rate)
                writer.write(piece)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a cut cable or a dead peer looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    writer.transport.abort()
