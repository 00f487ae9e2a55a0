"""The audit trail: who read which job or result, when, and with what outcome.

Details are short, fixed phrases or error codes; never a prediction, a key or a
patient field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.db import transaction
from services.results.models import audit_events
from services.results.store import now, valid_job_id
from shared.errors import CallerError


class Action(StrEnum):
    JOB_READ = "job.read"
    JOB_LIST = "job.list"
    RESULT_READ = "result.read"
    RESULT_DECRYPT = "result.decrypt"
    AUDIT_READ = "audit.read"


class Outcome(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    tenant: str
    actor: str | None
    action: str
    job_id: str | None
    outcome: str
    detail: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "tenant": self.tenant,
            "actor": self.actor,
            "action": self.action,
            "job_id": self.job_id,
            "outcome": self.outcome,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEvent]
    next_cursor: str | None


class AuditTrail:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(
        self,
        *,
        tenant: str,
        actor: str | None,
        action: Action,
        outcome: Outcome,
        job_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        # A malformed id was never a job; keep the event, drop the id.
        stored_id = job_id if job_id is not None and valid_job_id(job_id) else None
        async with transaction(self.engine) as conn:
            await conn.execute(
                insert(audit_events).values(
                    at=now(),
                    tenant=tenant,
                    actor=actor,
                    action=action.value,
                    job_id=stored_id,
                    outcome=outcome.value,
                    detail=detail,
                )
            )

    async def events(
        self,
        tenant: str,
        *,
        limit: int,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
    ) -> AuditPage:
        """A tenant's events, newest first; the cursor is the last id seen."""
        conditions = [audit_events.c.tenant == tenant]
        if since is not None:
            conditions.append(audit_events.c.at >= since)
        if until is not None:
            conditions.append(audit_events.c.at < until)
        if cursor is not None:
            conditions.append(audit_events.c.id < _decode(cursor))
        statement = (
            select(audit_events)
            .where(and_(*conditions))
            .order_by(audit_events.c.id.desc())
            .limit(limit + 1)
        )
        async with transaction(self.engine) as conn:
            rows = (await conn.execute(statement)).mappings().all()
        items = [AuditEvent(**dict(row)) for row in rows[:limit]]
        more = len(rows) > limit
        return AuditPage(items, str(items[-1].id) if more else None)


def _decode(cursor: str) -> int:
    if not cursor.isdigit():
        raise CallerError(
            f"audit cursor {cursor[:40]!r} is not one this service issued;"
            " pass next_cursor from the previous page."
        )
    return int(cursor)
