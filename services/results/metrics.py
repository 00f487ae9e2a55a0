"""Prometheus metrics of the results service, on a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, generate_latest


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        requests = Counter(
            "obscura_results_http_requests",
            "Internal API requests by route and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        messages = Counter(
            "obscura_results_messages",
            "Consumed messages by queue and what they did to job state.",
            ["queue", "disposition"],
            registry=self.registry,
        )
        object.__setattr__(self, "requests", requests)
        object.__setattr__(self, "messages", messages)

    requests: Counter = field(init=False)
    messages: Counter = field(init=False)

    def render(self) -> bytes:
        return generate_latest(self.registry)
