"""The gateway's uvicorn server, with the connection limits slow clients need.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, with
``limit_concurrency``, answers 503 once that many connections are open; but it has
no limit on how long a client may take to send its request headers, so a few
hundred clients sending a byte a second would hold every slot and starve real
uploads. ``HeaderTimeoutProtocol`` closes a connection whose request line and
headers are not complete within ``header_timeout_s``; a slow body is the app's
business (``services.gateway.intake.paced``).
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.gateway.settings import GatewaySettings


class HeaderTimeoutProtocol(H11Protocol):
    """h11 protocol that drops a connection still inside its headers too long."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        # The next request on a kept-alive connection gets its own allowance.
        self._arm()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(
            self.header_timeout_s, self._headers_late
        )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_for(settings: GatewaySettings) -> type[HeaderTimeoutProtocol]:
    """A protocol class carrying this gateway's header timeout."""
    return type(
        "GatewayProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout_s": settings.header_timeout_s},
    )


def server_config(app: FastAPI, settings: GatewaySettings) -> uvicorn.Config:
    """The uvicorn configuration ``python -m services.gateway`` serves with."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_for(settings),
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.timeout_keep_alive_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        log_config=None,
        access_log=False,
    )
