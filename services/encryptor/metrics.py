"""Prometheus metrics of the encryptor, in a registry per app instance."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


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
