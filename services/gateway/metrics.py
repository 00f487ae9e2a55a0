"""Prometheus metrics and the per-request middleware of the gateway.

The middleware gives every request an id (the caller's ``X-Request-ID`` when it
is short and printable, else a fresh one), binds it for log lines, echoes it in
the answer, counts the request by route template and status, and logs one line.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import bind_context, get_logger, unbind_context

log = get_logger(__name__)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "obscura_gateway_requests",
            "HTTP requests by route template and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "obscura_gateway_upload_bytes",
            "Image bytes read from uploads and streamed on.",
            registry=self.registry,
        )
        self.submissions = Counter(
            "obscura_gateway_submissions",
            "Job submissions by outcome code.",
            ["outcome"],
            registry=self.registry,
        )


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request_id = _request_id(scope)
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
            route = _route_of(scope)
            self._metrics.requests.labels(route, str(status)).inc()
            log.info(
                "request",
                method=scope["method"],
                route=route,
                status=status,
                duration_s=round(time.monotonic() - started, 4),
            )
            unbind_context("request_id", "job_id")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id" and 0 < len(value) <= 64 and value.isascii():
            text = str(value.decode())
            if text.replace("-", "").isalnum():
                return text
    return secrets.token_hex(8)


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
