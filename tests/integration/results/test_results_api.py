"""The internal API over ASGI, on real PostgreSQL, with the fake key service."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.components import Components
from services.results.db import make_engine
from services.results.handlers import MessageHandler
from services.results.models import audit_events
from services.results.tokens import (
    TokenInfo,
    create_token,
    mint_token,
    token_sha256,
    verify_token,
)
from tests.fakes import FakeKeyService
from tests.integration.results.conftest import KEY_ID
from tests.integration.results.helpers import (
    random_job_id,
    result_message,
    sealed_prediction,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MARKER = "planted-marker-7f3a"
SCORES = {"benign": 0.125, "malignant": 0.875}
QUEUED = {
    "object_key": "tenants/t/jobs/j/image.sealed",
    "sealed_size": 2048,
    "sealed_sha256": "11" * 32,
    "body_sha256": "22" * 32,
    "body_size": 1900,
    "view": "R-MLO",
}


def _create_body(tenant: str, **extra: Any) -> dict[str, Any]:
    body = {
        "tenant": tenant,
        "model": "nyu-gmic",
        "priority": "stat",
        "submitted_by": "tok_abc",
        "nonce": "ab" * 16,
    }
    return body | extra


async def _create(client: httpx.AsyncClient, tenant: str, **extra: Any) -> str:
    answer = await client.post("/internal/v1/jobs", json=_create_body(tenant, **extra))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["job_id"])


async def _queued(client: httpx.AsyncClient, tenant: str, **extra: Any) -> str:
    job_id = await _create(client, tenant, **extra)
    answer = await client.post(f"/internal/v1/jobs/{job_id}/queued", json=QUEUED)
    assert answer.status_code == 200
    return job_id


async def _audit(engine: AsyncEngine, tenant: str) -> list[tuple[str, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(audit_events.c.action, audit_events.c.outcome, audit_events.c.actor)
            .where(audit_events.c.tenant == tenant)
            .order_by(audit_events.c.id)
        )
    return [tuple(row) for row in rows]


async def _succeed(
    components: Components, tenant: str, job_id: str, scores: dict[str, float]
) -> None:
    keys = components.keys
    assert isinstance(keys, FakeKeyService)
    sealed = await sealed_prediction(keys, KEY_ID, tenant, job_id, scores)
    body = result_message(tenant, job_id, "succeeded", sealed)
    await MessageHandler(components.store).on_result(body)


async def test_api_refuses_a_missing_internal_token(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/internal/v1/jobs", params={"tenant": "x"}, headers={"Authorization": "no"}
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"


async def test_api_auth_answers_for_a_minted_token(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: str
) -> None:
    token = await create_token(engine, tenant, ["jobs:read", "jobs:submit"], "pacs")
    answer = await client.post("/internal/v1/auth", json={"token": token})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["tenant"], body["scopes"], body["name"]) == (
        tenant,
        ["jobs:read", "jobs:submit"],
        "pacs",
    )
    assert body["token_id"].startswith("tok_")
    unknown = await client.post("/internal/v1/auth", json={"token": token + "x"})
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "unauthorized"
    async with engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT count(*) FROM api_tokens WHERE token_sha256 = :t"),
            {"t": token},
        )
    assert stored == 0


async def test_api_idempotency_key_returns_the_same_job(
    client: httpx.AsyncClient, tenant: str
) -> None:
    body = _create_body(tenant, idempotency_key="upload-1")
    first = await client.post("/internal/v1/jobs", json=body)
    assert first.status_code == 201
    assert first.json()["created"] is True
    job_id = first.json()["job_id"]
    in_flight = await client.post("/internal/v1/jobs", json=body)
    assert in_flight.status_code == 409
    assert in_flight.json()["error"] == "idempotency_conflict"
    await client.post(f"/internal/v1/jobs/{job_id}/queued", json=QUEUED)
    again = await client.post("/internal/v1/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["job_id"] == job_id
    assert again.json()["created"] is False
    assert again.json()["body_sha256"] == QUEUED["body_sha256"]


async def test_api_queued_and_delete_follow_the_state_machine(
    client: httpx.AsyncClient, tenant: str
) -> None:
    doomed = await _create(client, tenant)
    assert (await client.delete(f"/internal/v1/jobs/{doomed}")).status_code == 204
    gone = await client.get(f"/internal/v1/jobs/{doomed}", params={"tenant": tenant})
    assert gone.status_code == 404
    job_id = await _queued(client, tenant)
    refused = await client.delete(f"/internal/v1/jobs/{job_id}")
    assert refused.status_code == 409
    job = (
        await client.get(f"/internal/v1/jobs/{job_id}", params={"tenant": tenant})
    ).json()
    assert job["status"] == "queued"
    assert job["view"] == "R-MLO"
    assert job["nonce"] == "ab" * 16
    assert job["links"] == {
        "self": f"/v1/jobs/{job_id}",
        "result": f"/v1/jobs/{job_id}/result",
    }


async def test_api_another_tenants_job_looks_missing(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: str
) -> None:
    job_id = await _queued(client, tenant)
    missing = random_job_id()
    params = {"tenant": "intruder", "actor": "tok_evil"}
    foreign = await client.get(f"/internal/v1/jobs/{job_id}", params=params)
    absent = await client.get(f"/internal/v1/jobs/{missing}", params=params)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.json()["error"] == absent.json()["error"] == "not_found"
    assert foreign.json()["message"].replace(job_id, "ID") == absent.json()[
        "message"
    ].replace(missing, "ID")
    result = await client.get(f"/internal/v1/jobs/{job_id}/result", params=params)
    assert result.status_code == 404
    assert await _audit(engine, "intruder") == [
        ("job.read", "not_found", "tok_evil"),
        ("job.read", "not_found", "tok_evil"),
        ("result.read", "not_found", "tok_evil"),
    ]


async def test_api_lists_jobs_newest_first_across_pages(
    client: httpx.AsyncClient, tenant: str
) -> None:
    made = [await _create(client, tenant) for _ in range(3)]
    made += [await _queued(client, tenant) for _ in range(2)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"tenant": tenant, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/internal/v1/jobs", params=params)).json()
        seen += [item["job_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    queued = await client.get(
        "/internal/v1/jobs", params={"tenant": tenant, "status": "queued"}
    )
    assert [i["job_id"] for i in queued.json()["items"]] == made[:2:-1]
    bad = await client.get(
        "/internal/v1/jobs", params={"tenant": tenant, "cursor": "bm9wZQ"}
    )
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_request"


async def test_api_lists_jobs_within_a_time_window(
    client: httpx.AsyncClient, tenant: str
) -> None:
    first = await _create(client, tenant)
    job = await client.get(f"/internal/v1/jobs/{first}", params={"tenant": tenant})
    cut = job.json()["created_at"]
    later = await _create(client, tenant)
    since = await client.get(
        "/internal/v1/jobs", params={"tenant": tenant, "since": cut}
    )
    until = await client.get(
        "/internal/v1/jobs", params={"tenant": tenant, "until": cut}
    )
    assert [i["job_id"] for i in since.json()["items"]] == [later, first]
    assert until.json()["items"] == []


async def test_api_result_not_ready_is_a_conflict(
    client: httpx.AsyncClient, engine: AsyncEngine, tenant: str
) -> None:
    job_id = await _queued(client, tenant)
    answer = await client.get(
        f"/internal/v1/jobs/{job_id}/result", params={"tenant": tenant, "actor": "a"}
    )
    assert answer.status_code == 409
    assert answer.json()["error"] == "result_not_ready"
    assert await _audit(engine, tenant) == [("result.read", "not_ready", "a")]


async def test_api_result_read_and_decrypt_are_audited(
    client: httpx.AsyncClient,
    components: Components,
    engine: AsyncEngine,
    tenant: str,
) -> None:
    job_id = await _queued(client, tenant)
    scores = SCORES | {MARKER: 0.0}
    await _succeed(components, tenant, job_id, scores)
    url = f"/internal/v1/jobs/{job_id}/result"
    sealed = await client.get(url, params={"tenant": tenant, "actor": "reader"})
    assert sealed.status_code == 200
    body = sealed.json()
    assert "prediction" not in body
    assert body["encryption_context"] == {
        "purpose": "result",
        "tenant": tenant,
        "job_id": job_id,
    }
    assert body["model"]["name"] == "nyu-gmic"
    assert body["key_id"] == KEY_ID and body["wrapped_key"]
    clear = await client.get(
        url, params={"tenant": tenant, "actor": "doctor", "decrypt": "true"}
    )
    assert clear.status_code == 200
    assert clear.json()["prediction"] == scores
    assert clear.json()["receipt"] == body["receipt"]
    assert await _audit(engine, tenant) == [
        ("result.read", "ok", "reader"),
        ("result.decrypt", "ok", "doctor"),
    ]
    async with engine.connect() as conn:
        dump = await conn.scalar(
            text(
                "SELECT string_agg(t::text, ' ') FROM (SELECT row_to_json(j) AS t"
                " FROM jobs j UNION ALL SELECT row_to_json(r) FROM results r"
                " UNION ALL SELECT row_to_json(a) FROM audit_events a) rows"
            )
        )
    assert job_id in dump
    assert MARKER not in dump


async def test_api_decrypt_refuses_a_result_of_another_context(
    client: httpx.AsyncClient,
    components: Components,
    engine: AsyncEngine,
    tenant: str,
) -> None:
    job_id = await _queued(client, tenant)
    await _succeed(components, tenant, job_id, SCORES)
    url = f"/internal/v1/jobs/{job_id}/result"
    params = {"tenant": tenant, "actor": "doctor", "decrypt": "true"}
    # The store is the only writer, so point the job's result at a key of
    # the image purpose directly, as a tampered database row would.
    keys = components.keys
    assert isinstance(keys, FakeKeyService)
    image = await sealed_prediction(
        keys,
        KEY_ID,
        tenant,
        job_id,
        SCORES,
        context={"purpose": "image", "tenant": tenant, "job_id": job_id},
    )
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE results SET sealed_result = :s WHERE job_id = :j"),
            {"s": image, "j": job_id},
        )
    refused = await client.get(url, params=params)
    assert refused.status_code == 403
    assert refused.json()["error"] == "decrypt_refused"
    assert await _audit(engine, tenant) == [("result.decrypt", "denied", "doctor")]


async def test_api_audit_lists_events_and_records_the_read(
    client: httpx.AsyncClient, tenant: str
) -> None:
    job_id = await _queued(client, tenant)
    for _ in range(3):
        await client.get(f"/internal/v1/jobs/{job_id}", params={"tenant": tenant})
    first = await client.get(
        "/internal/v1/audit", params={"tenant": tenant, "limit": 2, "actor": "adm"}
    )
    page = first.json()
    assert [e["action"] for e in page["items"]] == ["job.read", "job.read"]
    rest = await client.get(
        "/internal/v1/audit",
        params={"tenant": tenant, "cursor": page["next_cursor"]},
    )
    assert [e["action"] for e in rest.json()["items"]] == ["job.read"]
    latest = await client.get("/internal/v1/audit", params={"tenant": tenant})
    reads = [(e["action"], e["actor"]) for e in latest.json()["items"][:2]]
    assert reads == [("audit.read", None), ("audit.read", "adm")]


async def test_api_health_readiness_and_metrics(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": True, "consumers": False}
    metrics = await client.get("/metrics")
    assert "obscura_results_http_requests_total" in metrics.text
    schema = await client.get("/openapi.json")
    assert not any(p.startswith("/internal") for p in schema.json()["paths"])


async def test_api_invalid_body_is_a_stable_error(client: httpx.AsyncClient) -> None:
    answer = await client.post(
        "/internal/v1/jobs", json=_create_body("t", priority="urgent")
    )
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_request"
    assert "priority" in answer.json()["message"]


def test_mint_token_prints_a_token_whose_hash_alone_is_stored(
    results_db_url: str,
) -> None:
    token = mint_token(results_db_url, "st-mary", ["results:decrypt"], "dev")

    async def check() -> tuple[object, object]:
        engine = make_engine(results_db_url, pool_size=1)
        try:
            info = await verify_token(engine, token)
            async with engine.connect() as conn:
                raw = await conn.scalar(
                    text("SELECT count(*) FROM api_tokens WHERE token_sha256 = :t"),
                    {"t": token_sha256(token)},
                )
        finally:
            await engine.dispose()
        return info, raw

    info, stored = asyncio.run(check())
    assert isinstance(info, TokenInfo)
    assert (info.tenant, info.scopes) == ("st-mary", ("results:decrypt",))
    assert stored == 1
