"""The state machine on real PostgreSQL: migrations, forward-only moves, races."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.db import make_engine, migrate, transaction
from services.results.handlers import Disposition, MessageHandler
from services.results.models import jobs, metadata, results
from services.results.records import JobConflictError, JobNotFoundError
from services.results.store import JobStore
from shared.errors import InternalError
from tests.fakes import FakeKeyService
from tests.integration.results.conftest import (
    KEY_ID,
    create_database,
    db_url,
    drop_database,
    random_database,
)
from tests.integration.results.helpers import (
    job_message,
    new_job,
    object_fields,
    queued_job,
    random_job_id,
    result_message,
    sealed_prediction,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

SCORES = {"benign": 0.25, "malignant": 0.75}


async def _status(store: JobStore, tenant: str, job_id: str) -> str:
    job = await store.get(tenant, job_id)
    assert job is not None
    return job.status


async def _result_rows(engine: AsyncEngine, job_id: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(results).where(results.c.job_id == job_id)
        )
    return int(count or 0)


async def test_migrations_create_every_table_from_empty() -> None:
    name = random_database()
    await create_database(name)
    engine = make_engine(db_url(name), pool_size=1)
    try:
        await migrate(db_url(name))
        await migrate(db_url(name))  # a second run is a no-op
        async with engine.connect() as conn:
            found = await conn.run_sync(
                lambda sync: {
                    table: {c["name"] for c in inspect(sync).get_columns(table)}
                    for table in inspect(sync).get_table_names()
                }
            )
    finally:
        await engine.dispose()
        await drop_database(name)
    expected = {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}
    assert found.pop("alembic_version") == {"version_num"}
    assert found == expected


async def test_store_moves_forward_only(engine: AsyncEngine, tenant: str) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    at = datetime.now(UTC)
    assert await store.mark_running(tenant, job_id, at)
    assert await store.mark_failed(tenant, job_id, "model_unavailable", "m", at)
    assert not await store.mark_running(tenant, job_id, at)
    assert not await store.mark_failed(tenant, job_id, "other", "again", at)
    job = await store.get(tenant, job_id)
    assert job is not None
    assert (job.status, job.failure_reason) == ("failed", "model_unavailable")


async def test_store_queued_after_running_keeps_status(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    created = await store.create(new_job(tenant))
    assert await store.mark_running(tenant, created.job.id, datetime.now(UTC))
    job = await store.mark_queued(created.job.id, object_fields())
    assert job.status == "running"
    assert job.object_key == object_fields().object_key
    assert job.queued_at is not None


async def test_store_transition_ignores_another_tenants_job(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    assert not await store.mark_running("someone-else", job_id, datetime.now(UTC))
    assert await _status(store, tenant, job_id) == "queued"
    assert await store.get("someone-else", job_id) is None


async def test_store_racing_transitions_end_in_one_terminal_state(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    handler = MessageHandler(store)
    keys = FakeKeyService(KEY_ID)
    for _ in range(5):
        job_id = await queued_job(store, tenant)
        sealed = await sealed_prediction(keys, KEY_ID, tenant, job_id, SCORES)
        success = result_message(tenant, job_id, "succeeded", sealed)
        failure = result_message(
            tenant, job_id, "failed", reason="model_unavailable", message="x"
        )
        running = result_message(tenant, job_id, "running")
        bodies = [success, failure, running, success, failure, running] * 2
        outcomes = await asyncio.gather(*(handler.on_result(b) for b in bodies))
        status = await _status(store, tenant, job_id)
        assert status in {"succeeded", "failed"}
        assert await _result_rows(engine, job_id) == (status == "succeeded")
        terminal_moves = [
            d
            for d, b in zip(outcomes, bodies, strict=True)
            if d is Disposition.APPLIED and b is not running
        ]
        assert len(terminal_moves) == 1


async def test_store_create_with_idempotency_key_returns_the_same_job(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    first = await store.create(new_job(tenant, idempotency_key="k-1"))
    with pytest.raises(JobConflictError) as info:
        await store.create(new_job(tenant, idempotency_key="k-1"))
    assert info.value.code == "idempotency_conflict"
    await store.mark_queued(first.job.id, object_fields())
    again = await store.create(new_job(tenant, idempotency_key="k-1"))
    other_tenant = await store.create(new_job(tenant + "x", idempotency_key="k-1"))
    assert (again.created, again.job.id) == (False, first.job.id)
    assert again.job.body_sha256 == object_fields().body_sha256
    assert other_tenant.created and other_tenant.job.id != first.job.id


async def test_store_racing_creates_with_one_key_make_one_job(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    attempts = await asyncio.gather(
        *(store.create(new_job(tenant, idempotency_key="race")) for _ in range(6)),
        return_exceptions=True,
    )
    created = [a for a in attempts if not isinstance(a, BaseException)]
    conflicts = [a for a in attempts if isinstance(a, JobConflictError)]
    assert len(created) == 1 and created[0].created
    assert len(conflicts) == 5


async def test_store_delete_removes_only_received_jobs(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    created = await store.create(new_job(tenant, idempotency_key="del"))
    await store.delete_received(created.job.id)
    assert await store.get(tenant, created.job.id) is None
    reused = await store.create(new_job(tenant, idempotency_key="del"))
    assert reused.created
    queued = await queued_job(store, tenant)
    with pytest.raises(JobConflictError):
        await store.delete_received(queued)
    with pytest.raises(JobNotFoundError):
        await store.delete_received(random_job_id())


async def test_handler_same_success_twice_stores_one_result(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    handler = MessageHandler(store)
    job_id = await queued_job(store, tenant)
    sealed = await sealed_prediction(
        FakeKeyService(KEY_ID), KEY_ID, tenant, job_id, SCORES
    )
    body = result_message(tenant, job_id, "succeeded", sealed)
    assert await handler.on_result(body) is Disposition.APPLIED
    assert await handler.on_result(body) is Disposition.NO_CHANGE
    late = result_message(tenant, job_id, "running")
    assert await handler.on_result(late) is Disposition.NO_CHANGE
    assert await _status(store, tenant, job_id) == "succeeded"
    assert await _result_rows(engine, job_id) == 1


async def test_handler_unknown_job_creates_the_row(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = random_job_id()
    body = result_message(tenant, job_id, "running")
    assert await MessageHandler(store).on_result(body) is Disposition.APPLIED
    assert await _status(store, tenant, job_id) == "running"


async def test_handler_fails_job_whose_result_is_bound_to_another_job(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    keys = FakeKeyService(KEY_ID)
    foreign = await sealed_prediction(keys, KEY_ID, tenant, random_job_id(), SCORES)
    body = result_message(tenant, job_id, "succeeded", foreign)
    assert await MessageHandler(store).on_result(body) is Disposition.APPLIED
    job = await store.get(tenant, job_id)
    assert job is not None
    assert (job.status, job.failure_reason) == ("failed", "invalid_result")
    with pytest.raises(JobConflictError):
        await store.result(tenant, job_id)


async def test_handler_dead_letter_fails_job_unless_terminal(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    handler = MessageHandler(store)
    job_id = await queued_job(store, tenant)
    assert await handler.on_dead_letter(job_message(tenant, job_id)) is (
        Disposition.APPLIED
    )
    job = await store.get(tenant, job_id)
    assert job is not None
    assert (job.status, job.failure_reason) == ("failed", "retries_exhausted")
    again = await handler.on_dead_letter(job_message(tenant, job_id))
    assert again is Disposition.NO_CHANGE


async def test_handler_dead_letter_without_valid_job_fails_it_as_invalid(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    handler = MessageHandler(store)
    job_id = await queued_job(store, tenant)
    named = f'{{"job_id": "{job_id}", "tenant": "{tenant}"}}'.encode()
    assert await handler.on_dead_letter(named) is Disposition.APPLIED
    assert await handler.on_dead_letter(b"\xff not json") is Disposition.MALFORMED
    job = await store.get(tenant, job_id)
    assert job is not None and job.failure_reason == "invalid_message"


async def test_store_schema_refuses_an_unknown_status(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = await queued_job(store, tenant)
    with pytest.raises(InternalError):
        async with transaction(engine) as conn:
            await conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(status="sealed")
            )
    assert await _status(store, tenant, job_id) == "queued"


async def test_store_fails_only_reservations_older_than_the_cutoff(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    stale = (await store.create(new_job(tenant))).job.id
    fresh = (await store.create(new_job(tenant))).job.id
    queued = await queued_job(store, tenant)
    async with transaction(engine) as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id.in_([stale, queued]))
            .values(created_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    failed = await store.fail_abandoned(datetime.now(UTC) - timedelta(hours=1))
    assert failed == [stale]
    job = await store.get(tenant, stale)
    assert job is not None
    assert (job.status, job.failure_reason) == ("failed", "upload_abandoned")
    assert await _status(store, tenant, fresh) == "received"
    assert await _status(store, tenant, queued) == "queued"
    assert await store.fail_abandoned(datetime.now(UTC) - timedelta(hours=1)) == []


async def test_store_queued_after_running_keeps_times_in_order(
    engine: AsyncEngine, tenant: str
) -> None:
    store = JobStore(engine)
    job_id = (await store.create(new_job(tenant))).job.id
    assert await store.mark_running(tenant, job_id, datetime.now(UTC))
    job = await store.mark_queued(job_id, object_fields())
    assert job.status == "running"
    assert job.queued_at is not None and job.started_at is not None
    assert job.queued_at <= job.started_at
