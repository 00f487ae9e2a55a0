"""The KMS relay listener: the worker's only way out, to one allow-listed host.

The worker opens a connection on the relay transport (vsock in production,
loopback TCP in development) and each one is carried byte for byte to the single
KMS upstream fixed in the settings. Nothing in the traffic chooses the upstream,
and the bytes, TLS between enclave and KMS in production, are never read.
"""

from __future__ import annotations

import asyncio
import contextlib

from shared.link import Transport
from shared.logging import get_logger
from shared.relay import Relay, tcp_connector

log = get_logger(__name__)


class KmsRelay:
    """Serves ``shared.relay.Relay`` on a transport and stops it again."""

    def __init__(
        self,
        transport: Transport,
        upstream: tuple[str, int],
        *,
        max_connections: int,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self._transport = transport
        self._upstream = upstream
        self.relay = Relay(
            tcp_connector(*upstream),
            name="kms",
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
        )
        self._server: asyncio.Server | None = None

    @property
    def active(self) -> int:
        return self.relay.active

    @property
    def port(self) -> int:
        """The bound port (useful when the settings asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await self._transport.serve(self.relay.handle)
        host, port = self._upstream
        log.info("kms_relay_listening", upstream=f"{host}:{port}", port=self.port)

    async def stop(self, timeout_s: float = 2.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await self.relay.aclose()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout_s)
        log.info("kms_relay_stopped")
