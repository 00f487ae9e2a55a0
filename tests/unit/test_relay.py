import asyncio
import contextlib
import hashlib
import os

import pytest

from shared.relay import Relay, tcp_connector


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def shut(*things: asyncio.StreamWriter | asyncio.Server) -> None:
    for thing in things:
        thing.close()
        with contextlib.suppress(OSError):
            await thing.wait_closed()
    # Let handler tasks see their connections close before the loop ends.
    await asyncio.sleep(0.05)


async def start(handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.timeout(20)
async def test_relay_carries_bytes_both_ways_unchanged() -> None:
    upstream, up_port = await start(echo)
    relay = Relay(tcp_connector("127.0.0.1", up_port), name="test")
    front, port = await start(relay.handle)
    payload = os.urandom(3 * 1024 * 1024 + 7)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await reader.read(-1)
    await sender
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert relay.total == 1
    await shut(writer, front, upstream)


@pytest.mark.timeout(20)
async def test_relay_closes_client_when_upstream_is_down() -> None:
    probe, dead_port = await start(echo)
    probe.close()
    await probe.wait_closed()
    relay = Relay(tcp_connector("127.0.0.1", dead_port), name="test")
    front, port = await start(relay.handle)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    await shut(writer, front)


@pytest.mark.timeout(20)
async def test_relay_bounds_concurrent_connections() -> None:
    upstream, up_port = await start(echo)
    relay = Relay(tcp_connector("127.0.0.1", up_port), name="test", max_connections=2)
    front, port = await start(relay.handle)
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for _, writer in clients:
        writer.write(b"x")
    await asyncio.sleep(0.3)
    assert relay.active == 2
    first_reader, first_writer = clients[0]
    assert await first_reader.readexactly(1) == b"x"
    first_writer.write_eof()
    assert await first_reader.read(-1) == b""
    third_reader, _ = clients[2]
    assert await asyncio.wait_for(third_reader.readexactly(1), 5) == b"x"
    await shut(*(writer for _, writer in clients), front, upstream)
