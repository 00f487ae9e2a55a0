"""What the API and the consumers share: one engine, store, audit trail, KMS."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.audit import AuditTrail
from services.results.consumers import Consumers
from services.results.db import ping
from services.results.metrics import Metrics
from services.results.settings import ResultsSettings
from services.results.store import JobStore
from shared.keys import KeyService


@dataclass
class Components:
    settings: ResultsSettings
    engine: AsyncEngine
    keys: KeyService
    consumers: Consumers | None = None
    metrics: Metrics = field(default_factory=Metrics)
    store: JobStore = field(init=False)
    audit: AuditTrail = field(init=False)

    def __post_init__(self) -> None:
        self.store = JobStore(self.engine)
        self.audit = AuditTrail(self.engine)

    def page_limit(self, requested: int | None) -> int:
        limit = requested or self.settings.page_limit_default
        return min(limit, self.settings.page_limit_max)

    async def readiness(self) -> dict[str, bool]:
        consumers = self.consumers is not None and self.consumers.running
        return {"database": await ping(self.engine), "consumers": consumers}
