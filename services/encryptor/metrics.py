"""Prometheus metrics of the encryptor, in a registry per app instance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import get_logger

log = get_logger(__name__)


@dataclass
class EncryptorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "obscura_encryptor_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "obscura_encryptor_upload_bytes",
            "Plaintext bytes read from uploads.",
            registry=self.registry,
        )
        self.seal_seconds = Histogram(
            "obscura_encryptor_seal_seconds",
            "Time to seal, store and publish one image.",
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.publish_failures = Counter(
            "obscura_encryptor_publish_failures",
            "Job messages the broker did not confirm.",
            registry=self.registry,
        )


class RequestMetricsMiddleware:
    """Counts each request by route template and status; one log line each."""

    def __init__(self, app: ASGIApp, metrics: EncryptorMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500
        started = time.monotonic()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_status)
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


def _route_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
