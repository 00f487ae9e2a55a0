"""Byte-stream transports under the link: AF_VSOCK in production, loopback TCP in dev.

Both hand the same ``asyncio`` reader and writer to the code above, so framing,
handshake and bodies run one code path everywhere. In an enclave deployment the
worker serves on ``VMADDR_CID_ANY`` and the proxy on the parent instance connects to
the enclave's CID; the worker reaches the parent itself at CID 3.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from shared.errors import CallerError, PermanentDependencyError
from shared.link.frames import LinkError, LinkTimeoutError
from shared.logging import get_logger

HYPERVISOR_CID = 0
LOCAL_CID = 1
HOST_CID = 2
PARENT_CID = 3
FIRST_ENCLAVE_CID = 4
VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_PORT_ANY = 0xFFFFFFFF
READER_LIMIT = 1024 * 1024

log = get_logger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ConnectionHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


class Transport(Protocol):
    async def connect(self) -> Streams:
        """One connection to the peer, ready for ``client_hello``."""
        ...

    async def serve(self, handler: ConnectionHandler) -> asyncio.Server:
        """Accepts connections and runs ``handler`` on each."""
        ...


def _limit_send_size(writer: asyncio.StreamWriter) -> None:
    # With a zero high-water mark the transport pauses as soon as any byte stays
    # queued, so drain() returns only once the queue is empty and every send() the
    # transport makes carries at most the one piece the link just wrote.
    writer.transport.set_write_buffer_limits(high=0)


def _tuned(handler: ConnectionHandler) -> ConnectionHandler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _limit_send_size(writer)
        await handler(reader, writer)

    return run


async def _open(what: str, seconds: float, opening: Awaitable[Streams]) -> Streams:
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await opening
    except TimeoutError as exc:
        raise LinkTimeoutError(
            f"connecting to {what} took longer than {seconds} s; is the peer up?"
        ) from exc
    except OSError as exc:
        raise LinkError(
            f"connecting to {what} failed with {type(exc).__name__}; "
            "check that the peer is listening there."
        ) from exc
    _limit_send_size(writer)
    log.debug("link_connected", peer=what)
    return reader, writer


def _check_timeout(seconds: float) -> None:
    if seconds <= 0:
        raise CallerError(f"connect timeout {seconds} s must be positive.")


@dataclass(frozen=True)
class TcpTransport:
    """Loopback TCP for development and CI; any other address is refused."""

    host: str
    port: int
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError as exc:
            raise CallerError(
                f"TCP link host {self.host!r} is not an IP address; use 127.0.0.1."
            ) from exc
        if not address.is_loopback:
            raise CallerError(
                f"TCP link host {self.host} is not a loopback address; the TCP "
                "transport is for development only, use 127.0.0.1 or vsock."
            )
        if not 0 <= self.port <= 0xFFFF:
            raise CallerError(f"TCP port {self.port} is outside 0..65535.")
        _check_timeout(self.connect_timeout)

    async def connect(self) -> Streams:
        if not self.port:
            raise CallerError("TCP port 0 cannot be connected to; pass the real port.")
        what = f"tcp {self.host}:{self.port}"
        opening = asyncio.open_connection(self.host, self.port, limit=READER_LIMIT)
        return await _open(what, self.connect_timeout, opening)

    async def serve(self, handler: ConnectionHandler) -> asyncio.Server:
        return await asyncio.start_server(
            _tuned(handler), self.host, self.port, limit=READER_LIMIT
        )


def _vsock_family() -> int:
    family: int | None = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise PermanentDependencyError(
            "this platform has no AF_VSOCK; use the TCP transport outside Nitro."
        )
    return family


@dataclass(frozen=True)
class VsockTransport:
    """AF_VSOCK between the parent instance and its enclave."""

    cid: int
    port: int
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.cid <= VMADDR_CID_ANY:
            raise CallerError(f"vsock CID {self.cid} is outside 0..{VMADDR_CID_ANY}.")
        if self.cid in (HYPERVISOR_CID, LOCAL_CID, HOST_CID):
            raise CallerError(
                f"vsock CID {self.cid} is reserved (hypervisor, local or host); "
                f"the parent instance is CID {PARENT_CID}, enclaves start at "
                f"{FIRST_ENCLAVE_CID}."
            )
        if not 0 < self.port < VMADDR_PORT_ANY:
            raise CallerError(
                f"vsock port {self.port} is outside 1..{VMADDR_PORT_ANY - 1}."
            )
        _check_timeout(self.connect_timeout)

    @classmethod
    def to_enclave(cls, cid: int, port: int) -> VsockTransport:
        """For the proxy: the enclave's CID, as ``nitro-cli describe-enclaves`` says."""
        if cid == PARENT_CID:
            raise CallerError(
                f"vsock CID {PARENT_CID} is the parent instance the proxy runs on, "
                "not its enclave; pass the enclave's CID."
            )
        if not FIRST_ENCLAVE_CID <= cid < VMADDR_CID_ANY:
            raise CallerError(
                f"enclave CID {cid} is outside {FIRST_ENCLAVE_CID}.."
                f"{VMADDR_CID_ANY - 1}."
            )
        return cls(cid, port)

    @classmethod
    def to_parent(cls, port: int) -> VsockTransport:
        """For the worker: the parent instance, always CID 3 from inside."""
        return cls(PARENT_CID, port)

    @classmethod
    def listening(cls, port: int) -> VsockTransport:
        """For the worker's server: any local CID."""
        return cls(VMADDR_CID_ANY, port)

    def connect_address(self) -> tuple[int, int]:
        if self.cid == VMADDR_CID_ANY:
            raise CallerError(
                "vsock CID VMADDR_CID_ANY can only be listened on; connect to the "
                "enclave's or the parent's CID."
            )
        return self.cid, self.port

    def bind_address(self) -> tuple[int, int]:
        return self.cid, self.port

    async def connect(self) -> Streams:
        address = self.connect_address()
        sock = socket.socket(_vsock_family(), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            opening = self._finish_connect(loop.sock_connect(sock, address), sock)
            return await _open(f"vsock {address}", self.connect_timeout, opening)
        except BaseException:
            sock.close()
            raise

    @staticmethod
    async def _finish_connect(
        connecting: Awaitable[None], sock: socket.socket
    ) -> Streams:
        await connecting
        return await asyncio.open_connection(sock=sock, limit=READER_LIMIT)

    async def serve(self, handler: ConnectionHandler) -> asyncio.Server:
        sock = socket.socket(_vsock_family(), socket.SOCK_STREAM)
        try:
            sock.bind(self.bind_address())
            sock.listen()
            sock.setblocking(False)
            return await asyncio.start_server(
                _tuned(handler), sock=sock, limit=READER_LIMIT
            )
        except OSError as exc:
            sock.close()
            raise LinkError(
                f"listening on vsock {self.bind_address()} failed with "
                f"{type(exc).__name__}; is the port already taken?"
            ) from exc
