import asyncio
import contextlib
import time

import pytest

from tests.faults import FaultyLink

pytestmark = pytest.mark.timeout(20)


async def echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def roundtrip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = await reader.readexactly(len(data))
    writer.close()
    return received


async def test_faulty_link_passes_bytes_through() -> None:
    server, port = await echo_server()
    async with FaultyLink("127.0.0.1", port) as link:
        assert await roundtrip(link.port, b"hello" * 1000) == b"hello" * 1000
    server.close()
    await server.wait_closed()


async def test_faulty_link_cut_resets_open_connections_and_refuses_new() -> None:
    server, port = await echo_server()
    async with FaultyLink("127.0.0.1", port) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        link.cut()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(roundtrip(link.port, b"y"), 2)
        link.restore()
        assert await roundtrip(link.port, b"z") == b"z"
    server.close()
    await server.wait_closed()


async def test_faulty_link_stall_holds_bytes_until_restore() -> None:
    server, port = await echo_server()
    async with FaultyLink("127.0.0.1", port) as link:
        link.stall()
        task = asyncio.create_task(roundtrip(link.port, b"held"))
        await asyncio.sleep(0.3)
        assert not task.done()
        link.restore()
        assert await asyncio.wait_for(task, 2) == b"held"
    server.close()
    await server.wait_closed()


async def test_faulty_link_slow_limits_throughput() -> None:
    server, port = await echo_server()
    async with FaultyLink("127.0.0.1", port) as link:
        link.slow(10_000)
        started = time.monotonic()
        await roundtrip(link.port, b"s" * 5_000)
        # 5 KB at 10 KB/s takes half a second however the two directions overlap.
        assert time.monotonic() - started >= 0.45
    server.close()
    await server.wait_closed()


def test_faulty_link_refuses_non_loopback_upstream() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultyLink("10.0.0.1", 5672)
