"""The job state machine: forward-only transitions and idempotent upserts.

    received ──> queued ──> running ──> succeeded
        │           │          │
        └───────────┴──────────┴────> failed

``sealed`` is a timestamp recorded with the ``queued`` transition. A proxy may
answer before the gateway's ``queued`` call lands, so ``running`` and
``succeeded`` are also accepted straight from ``received``; the late ``queued``
call then only fills in the object fields. Every move is a
single ``UPDATE ... WHERE status IN (allowed predecessors)``: under READ COMMITTED
PostgreSQL re-checks that condition after waiting for a competing writer's row
lock, so two consumers racing on one job cannot move it backwards, and a result
row is inserted only by the transaction whose ``succeeded`` update matched.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.results.db import transaction
from services.results.models import idempotency_keys, jobs, results
from services.results.records import (
    Created,
    Job,
    JobConflictError,
    JobNotFoundError,
    JobQuery,
    NewJob,
    ObjectFields,
    Page,
    StoredResult,
)
from shared.errors import CallerError

ALLOWED_FROM: Mapping[str, tuple[str, ...]] = {
    "queued": ("received",),
    "running": ("received", "queued"),
    "succeeded": ("received", "queued", "running"),
    "failed": ("received", "queued", "running"),
}


UPLOAD_ABANDONED = "upload_abandoned"


def now() -> datetime:
    return datetime.now(UTC)


def _not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"job {job_id} does not exist for this tenant; check the job id."
    )


def valid_job_id(job_id: str) -> bool:
    try:
        return str(uuid.UUID(job_id)) == job_id
    except ValueError:
        return False


class JobStore:
    """Every read and write of job state; the only writer of the jobs table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, new: NewJob) -> Created:
        """Reserve a job; a tenant's repeated idempotency key returns its job."""
        async with transaction(self.engine) as conn:
            row = await _insert_job(conn, new)
            if row is not None:
                job = Job.from_row(row)
                if new.idempotency_key is not None:
                    await conn.execute(
                        insert(idempotency_keys).values(
                            tenant=new.tenant,
                            key=new.idempotency_key,
                            job_id=job.id,
                            created_at=job.created_at,
                        )
                    )
                return Created(job, created=True)
            existing = await _by_idempotency_key(conn, new)
        return _repeat(existing, new)

    async def mark_queued(self, job_id: str, fields: ObjectFields) -> Job:
        """``received`` -> ``queued``; a job already further on keeps its status."""
        # The proxy may report the job running before this call lands; the
        # sealed and queued times can then be no later than the start.
        at = func.least(now(), func.coalesce(jobs.c.started_at, now()))
        values: dict[str, Any] = {
            "status": _case_received(jobs.c.status, "queued"),
            "object_key": _fill(jobs.c.object_key, fields.object_key),
            "sealed_size": _fill(jobs.c.sealed_size, fields.sealed_size),
            "sealed_sha256": _fill(jobs.c.sealed_sha256, fields.sealed_sha256),
            "body_sha256": _fill(jobs.c.body_sha256, fields.body_sha256),
            "body_size": _fill(jobs.c.body_size, fields.body_size),
            "sealed_at": _fill(jobs.c.sealed_at, at),
            "queued_at": _fill(jobs.c.queued_at, at),
        }
        if fields.view is not None:
            values["view"] = _fill(jobs.c.view, fields.view)
        statement = (
            update(jobs).where(jobs.c.id == job_id).values(values).returning(*jobs.c)
        )
        async with transaction(self.engine) as conn:
            row = (await conn.execute(statement)).mappings().first()
        if row is None:
            raise _not_found(job_id)
        return Job.from_row(row)

    async def delete_received(self, job_id: str) -> None:
        """Drop a reservation whose upload failed; anything past ``received`` stays."""
        async with transaction(self.engine) as conn:
            gone = await conn.execute(
                delete(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == "received")
                .returning(jobs.c.id)
            )
            if gone.first() is not None:
                return
            status = await conn.scalar(select(jobs.c.status).where(jobs.c.id == job_id))
        if status is None:
            raise _not_found(job_id)
        raise JobConflictError(
            f"job {job_id} is {status}, not received; only a reservation whose"
            " upload failed can be deleted.",
            code="job_not_deletable",
        )

    async def get(self, tenant: str, job_id: str) -> Job | None:
        async with transaction(self.engine) as conn:
            return await _get(conn, tenant, job_id)

    async def list_jobs(self, query: JobQuery) -> Page:
        """Newest first, filtered, continuing after an opaque cursor."""
        conditions = [jobs.c.tenant == query.tenant]
        if query.status is not None:
            conditions.append(jobs.c.status == query.status)
        if query.since is not None:
            conditions.append(jobs.c.created_at >= query.since)
        if query.until is not None:
            conditions.append(jobs.c.created_at < query.until)
        if query.cursor is not None:
            at, last_id = decode_cursor(query.cursor)
            conditions.append(tuple_(jobs.c.created_at, jobs.c.id) < (at, last_id))
        statement = (
            select(jobs)
            .where(and_(*conditions))
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(query.limit + 1)
        )
        async with transaction(self.engine) as conn:
            rows = (await conn.execute(statement)).mappings().all()
        items = [Job.from_row(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return Page(items, encode_cursor(items[-1]) if more else None)

    async def mark_running(self, tenant: str, job_id: str, at: datetime) -> bool:
        async with transaction(self.engine) as conn:
            return await _transition(
                conn, tenant, job_id, "running", {"started_at": at}
            )

    async def mark_failed(
        self, tenant: str, job_id: str, reason: str, message: str, at: datetime
    ) -> bool:
        values = {
            "finished_at": at,
            "failure_reason": reason,
            "failure_message": message,
        }
        async with transaction(self.engine) as conn:
            return await _transition(conn, tenant, job_id, "failed", values)

    async def mark_succeeded(self, tenant: str, result: StoredResult) -> bool:
        """Move to ``succeeded`` and store the result, both or neither."""
        values = {
            "finished_at": result.stored_at,
            "started_at": _fill(jobs.c.started_at, result.stored_at),
        }
        async with transaction(self.engine) as conn:
            moved = await _transition(conn, tenant, result.job_id, "succeeded", values)
            if moved:
                await conn.execute(
                    pg_insert(results)
                    .values(_result_values(result))
                    .on_conflict_do_nothing(index_elements=["job_id"])
                )
            return moved

    async def fail_abandoned(self, older_than: datetime) -> list[str]:
        """Fail jobs still ``received`` since before ``older_than``.

        A job stays ``received`` only while its upload is under way; one older than
        any upload can take lost its gateway mid-upload (a crash, not the clean 503
        path, which deletes the reservation), so no object will ever follow.
        """
        statement = (
            update(jobs)
            .where(jobs.c.status == "received", jobs.c.created_at < older_than)
            .values(
                status="failed",
                finished_at=now(),
                failure_reason=UPLOAD_ABANDONED,
                failure_message=(
                    "the upload never completed (the gateway stopped while receiving"
                    " it); submit the image again"
                ),
            )
            .returning(jobs.c.id)
        )
        async with transaction(self.engine) as conn:
            return [str(row.id) for row in await conn.execute(statement)]

    async def ensure(self, tenant: str, job_id: str, model: str) -> bool:
        """Create a row for a job first heard of from a result; True if created."""
        statement = (
            pg_insert(jobs)
            .values(
                id=job_id,
                tenant=tenant,
                status="received",
                model=model,
                priority="routine",
                created_at=now(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(jobs.c.id)
        )
        async with transaction(self.engine) as conn:
            return (await conn.execute(statement)).first() is not None

    async def result(self, tenant: str, job_id: str) -> tuple[Job, StoredResult]:
        """The job and its stored result, or why there is none to give."""
        async with transaction(self.engine) as conn:
            job = await _get(conn, tenant, job_id)
            if job is None:
                raise _not_found(job_id)
            row = (
                (await conn.execute(select(results).where(results.c.job_id == job_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise JobConflictError(
                f"job {job_id} is {job.status} and has no result yet;"
                " poll the job until it has succeeded.",
                code="result_not_ready",
            )
        return job, StoredResult.from_row(row)


def _case_received(column: Any, target: str) -> Any:
    return case((column == "received", target), else_=column)


def _fill(column: Any, value: Any) -> Any:
    """Keep a value already recorded, fill it in otherwise."""
    return func.coalesce(column, value)


async def _insert_job(conn: AsyncConnection, new: NewJob) -> Mapping[Any, Any] | None:
    statement = (
        pg_insert(jobs)
        .values(
            id=str(uuid.uuid4()),
            tenant=new.tenant,
            status="received",
            view=new.view,
            model=new.model,
            priority=new.priority,
            external_ref=new.external_ref,
            idempotency_key=new.idempotency_key,
            nonce=new.nonce,
            submitted_by=new.submitted_by,
            created_at=now(),
        )
        .on_conflict_do_nothing(constraint="uq_jobs_tenant_idempotency")
        .returning(*jobs.c)
    )
    return (await conn.execute(statement)).mappings().first()


async def _by_idempotency_key(conn: AsyncConnection, new: NewJob) -> Job | None:
    row = (
        (
            await conn.execute(
                select(jobs).where(
                    jobs.c.tenant == new.tenant,
                    jobs.c.idempotency_key == new.idempotency_key,
                )
            )
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


def _repeat(existing: Job | None, new: NewJob) -> Created:
    # None here means the other reservation was deleted between our insert and
    # our read: its upload failed, and the caller may simply try again.
    if existing is None or existing.status == "received":
        raise JobConflictError(
            f"idempotency key {new.idempotency_key!r} belongs to an upload still in"
            " flight; retry once it has finished.",
            code="idempotency_conflict",
        )
    return Created(existing, created=False)


async def _get(conn: AsyncConnection, tenant: str, job_id: str) -> Job | None:
    if not valid_job_id(job_id):
        return None
    row = (
        (
            await conn.execute(
                select(jobs).where(jobs.c.id == job_id, jobs.c.tenant == tenant)
            )
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


async def _transition(
    conn: AsyncConnection,
    tenant: str,
    job_id: str,
    target: str,
    values: Mapping[str, Any],
) -> bool:
    """One forward move; False when the job is elsewhere (or another tenant's)."""
    statement = (
        update(jobs)
        .where(
            jobs.c.id == job_id,
            jobs.c.tenant == tenant,
            or_(*(jobs.c.status == status for status in ALLOWED_FROM[target])),
        )
        .values(status=target, **values)
        .returning(jobs.c.id)
    )
    return (await conn.execute(statement)).first() is not None


def _result_values(result: StoredResult) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "sealed_result": result.sealed_result,
        "sealed_result_sha256": result.sealed_result_sha256,
        "key_id": result.key_id,
        "wrapped_key": result.wrapped_key,
        "encryption_context": dict(result.encryption_context),
        "receipt": dict(result.receipt),
        "model_name": result.model_name,
        "model_version": result.model_version,
        "model_sha256": result.model_sha256,
        "stored_at": result.stored_at,
    }


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, _, job_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        parsed = datetime.fromisoformat(at)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise CallerError(
            f"cursor {cursor[:40]!r} is not one this service issued;"
            " pass next_cursor from the previous page."
        ) from exc
    if not valid_job_id(job_id) or parsed.tzinfo is None:
        raise CallerError(
            f"cursor {cursor[:40]!r} is not one this service issued;"
            " pass next_cursor from the previous page."
        )
    return parsed, job_id
