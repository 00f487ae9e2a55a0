"""Prometheus metrics of the gateway, in a registry per app instance.

Requests are counted and logged by ``shared.http_middleware.RequestMiddleware``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter


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
