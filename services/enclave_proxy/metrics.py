"""Prometheus metrics of one proxy, in a registry of its own.

A registry per proxy (not the process-wide default) lets tests run several
proxies in one process without their counters colliding.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

OUTCOMES = ("succeeded", "failed", "retried", "rejected", "duplicate", "abandoned")


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "obscura_proxy_jobs",
            "Deliveries handled, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "obscura_proxy_jobs_in_flight",
            "Jobs currently being run.",
            registry=self.registry,
        )
        self.duration = Histogram(
            "obscura_proxy_job_duration_seconds",
            "Time from delivery to ack or nack.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.worker_ready = Gauge(
            "obscura_proxy_worker_ready",
            "1 while the enclave worker reports ready.",
            registry=self.registry,
        )
        self.relay_connections = Gauge(
            "obscura_proxy_relay_connections",
            "KMS relay connections open now.",
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.jobs.labels(outcome=outcome)

    def watch_relay(self, active: Callable[[], int]) -> None:
        self.relay_connections.set_function(lambda: float(active()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
