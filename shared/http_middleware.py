"""The per-request ASGI middleware shared by the HTTP services.

Every request gets an id (the caller's ``X-Request-ID`` when it is short and
printable, else a fresh one), bound for log lines and echoed in the answer; it is
counted by route template and status, and logged in one line. Health, readiness
and metrics probes are logged at DEBUG: supervisors poll them every few seconds.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import bind_context, get_logger, unbind_context

log = get_logger(__name__)

PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class _Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


class RequestMiddleware:
    def __init__(self, app: ASGIApp, requests: _Counter) -> None:
        self._app = app
        self._requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        status = 500
        started = time.monotonic()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        bind_context(request_id=request_id)
        try:
            await self._app(scope, receive, send_with_id)
        finally:
            route = route_of(scope)
            self._requests.labels(route, str(status)).inc()
            emit = log.debug if route in PROBE_ROUTES else log.info
            emit(
                "request",
                method=scope["method"],
                route=route,
                status=status,
                duration_s=round(time.monotonic() - started, 4),
            )
            unbind_context("request_id", "job_id")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id" and 0 < len(value) <= 64 and value.isascii():
            text = str(value.decode())
            if text.replace("-", "").isalnum():
                return text
    return secrets.token_hex(8)


def route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
