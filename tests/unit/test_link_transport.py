"""Transports: loopback TCP for real, vsock only as argument checks (no sockets)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from shared.errors import CallerError
from shared.link.frames import LinkError
from shared.link.transport import (
    PARENT_CID,
    VMADDR_CID_ANY,
    TcpTransport,
    VsockTransport,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def no_vsock_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if anything tries to create an AF_VSOCK socket."""
    real = socket.socket

    def guarded(family: int = -1, *args: Any, **kwargs: Any) -> socket.socket:
        if family == getattr(socket, "AF_VSOCK", object()):
            pytest.fail("a test tried to open an AF_VSOCK socket")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", guarded)


NOT_LOOPBACK = ["10.0.0.5", "0.0.0.0", "::", "192.168.1.10"]  # noqa: S104


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_tcp_transport_non_loopback_host_refused(host: str) -> None:
    with pytest.raises(CallerError, match="not a loopback address"):
        TcpTransport(host, 5000)


@pytest.mark.parametrize("host", ["localhost", "enclave.internal"])
def test_tcp_transport_host_name_refused(host: str) -> None:
    with pytest.raises(CallerError, match=r"not an IP address; use 127\.0\.0\.1"):
        TcpTransport(host, 5000)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_tcp_transport_loopback_host_accepted(host: str) -> None:
    assert TcpTransport(host, 5000).host == host


@pytest.mark.parametrize("port", [-1, 65536])
def test_tcp_transport_port_out_of_range_refused(port: int) -> None:
    with pytest.raises(CallerError, match=f"TCP port {port}"):
        TcpTransport("127.0.0.1", port)


async def test_tcp_transport_connect_to_port_zero_refused() -> None:
    with pytest.raises(CallerError, match="port 0 cannot be connected"):
        await TcpTransport("127.0.0.1", 0).connect()


async def test_tcp_transport_nobody_listening_is_retryable_link_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LinkError, match=f"127.0.0.1:{port} failed") as info:
        await TcpTransport("127.0.0.1", port).connect()
    assert info.value.retryable


async def test_tcp_transport_round_trip_with_zero_write_buffer_limits() -> None:
    limits: list[tuple[int, int]] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits.append(writer.transport.get_write_buffer_limits())
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await TcpTransport("127.0.0.1", 0).serve(echo)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await TcpTransport("127.0.0.1", port).connect()
    writer.write(b"hello")
    assert await reader.read() == b"hello"
    limits.append(writer.transport.get_write_buffer_limits())
    writer.close()
    server.close()
    await server.wait_closed()
    assert limits == [(0, 0), (0, 0)]


@pytest.mark.usefixtures("no_vsock_sockets")
@pytest.mark.parametrize("cid", [0, 1, 2])
def test_vsock_transport_reserved_cid_refused(cid: int) -> None:
    with pytest.raises(CallerError, match=f"vsock CID {cid} is reserved"):
        VsockTransport(cid, 5000)


@pytest.mark.usefixtures("no_vsock_sockets")
@pytest.mark.parametrize("cid", [-1, 2**32])
def test_vsock_transport_cid_out_of_range_refused(cid: int) -> None:
    with pytest.raises(CallerError, match=r"is outside 0\.\.4294967295"):
        VsockTransport(cid, 5000)


@pytest.mark.usefixtures("no_vsock_sockets")
@pytest.mark.parametrize("port", [0, 2**32 - 1, 2**32])
def test_vsock_transport_port_out_of_range_refused(port: int) -> None:
    with pytest.raises(CallerError, match=f"vsock port {port}"):
        VsockTransport(16, port)


@pytest.mark.usefixtures("no_vsock_sockets")
def test_vsock_transport_to_enclave_refuses_the_parent_cid() -> None:
    with pytest.raises(CallerError, match="CID 3 is the parent instance"):
        VsockTransport.to_enclave(PARENT_CID, 5000)
    with pytest.raises(CallerError, match="enclave CID 4294967295 is outside"):
        VsockTransport.to_enclave(VMADDR_CID_ANY, 5000)
    assert VsockTransport.to_enclave(16, 5000).connect_address() == (16, 5000)


@pytest.mark.usefixtures("no_vsock_sockets")
def test_vsock_transport_any_cid_is_for_listening_only() -> None:
    transport = VsockTransport.listening(5000)
    assert transport.bind_address() == (VMADDR_CID_ANY, 5000)
    with pytest.raises(CallerError, match="VMADDR_CID_ANY can only be listened on"):
        transport.connect_address()


@pytest.mark.usefixtures("no_vsock_sockets")
def test_vsock_transport_to_parent_uses_cid_3() -> None:
    assert VsockTransport.to_parent(8000).connect_address() == (PARENT_CID, 8000)


@pytest.mark.usefixtures("no_vsock_sockets")
def test_vsock_transport_non_positive_connect_timeout_refused() -> None:
    with pytest.raises(CallerError, match="connect timeout 0 s"):
        VsockTransport(16, 5000, connect_timeout=0)
