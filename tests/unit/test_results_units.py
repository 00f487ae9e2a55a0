"""Results-service pieces that need no database: settings, cursors, decrypt,
result-message checks, token scopes and the job's public JSON."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.results.decrypt import decrypt_prediction, result_context
from services.results.handlers import _stored_result
from services.results.records import Job, StoredResult
from services.results.settings import ResultsSettings
from services.results.store import decode_cursor, encode_cursor
from services.results.tokens import _check_scopes, token_sha256
from shared.envelope import seal_bytes
from shared.errors import CallerError, KeyContextMismatchError
from shared.messages import parse_result
from tests.fakes import FakeKeyService

KEY_ID = "alias/obscura-hospital-test"
TENANT = "st-mary"
JOB_ID = str(uuid.UUID(int=7))


def _job(**overrides: object) -> Job:
    values: dict[str, object] = {name: None for name in Job.__dataclass_fields__} | {
        "id": JOB_ID,
        "tenant": TENANT,
        "status": "failed",
        "model": "nyu",
        "priority": "routine",
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "failure_reason": "retries_exhausted",
        "failure_message": "gave up",
    }
    return Job(**(values | overrides))  # type: ignore[arg-type]


async def _sealed(keys: FakeKeyService, context: dict[str, str]) -> bytes:
    document = {"prediction": {"benign": 0.9, "malignant": 0.1}, "job_id": JOB_ID}
    return bytes(await seal_bytes(json.dumps(document).encode(), keys, KEY_ID, context))


def _stored(sealed: bytes) -> StoredResult:
    return StoredResult(
        job_id=JOB_ID,
        sealed_result=sealed,
        sealed_result_sha256="0" * 64,
        key_id=KEY_ID,
        wrapped_key=b"x",
        encryption_context={},
        receipt={},
        model_name="nyu",
        model_version="1",
        model_sha256="0" * 64,
        stored_at=datetime.now(UTC),
    )


def test_settings_refuse_placeholder_token_outside_development() -> None:
    with pytest.raises(ValidationError, match="INTERNAL_TOKEN"):
        ResultsSettings(environment="production", internal_token="changeme")
    chosen = ResultsSettings(environment="production", internal_token="x" * 40)
    assert "x" * 40 not in repr(chosen)


def test_cursor_round_trips_and_refuses_foreign_text() -> None:
    job = _job()
    assert decode_cursor(encode_cursor(job)) == (job.created_at, job.id)
    with pytest.raises(CallerError, match="next_cursor"):
        decode_cursor("not-a-cursor")


def test_job_json_reports_failure_and_links() -> None:
    body = _job().to_json()
    assert body["failure"] == {"reason": "retries_exhausted", "message": "gave up"}
    assert body["links"]["self"] == f"/v1/jobs/{JOB_ID}"
    assert body["created_at"] == "2025-01-02T03:04:05+00:00"
    assert _job(failure_reason=None).to_json()["failure"] is None


async def test_decrypt_prediction_returns_scores_for_the_job() -> None:
    keys = FakeKeyService(KEY_ID)
    sealed = await _sealed(keys, result_context(TENANT, JOB_ID))
    scores = await decrypt_prediction(keys, _stored(sealed), TENANT)
    assert scores == {"benign": 0.9, "malignant": 0.1}
    assert keys.operations("Decrypt")[0].context == result_context(TENANT, JOB_ID)


async def test_decrypt_prediction_refuses_another_tenant_before_kms() -> None:
    keys = FakeKeyService(KEY_ID)
    sealed = await _sealed(keys, result_context(TENANT, JOB_ID))
    with pytest.raises(KeyContextMismatchError):
        await decrypt_prediction(keys, _stored(sealed), "other-tenant")
    assert keys.operations("Decrypt") == []


async def test_stored_result_refuses_a_hash_that_does_not_match() -> None:
    keys = FakeKeyService(KEY_ID)
    sealed = await _sealed(keys, result_context(TENANT, JOB_ID))
    message = parse_result(
        json.dumps(
            {
                "job_id": JOB_ID,
                "tenant": TENANT,
                "status": "succeeded",
                "at": datetime.now(UTC).isoformat(),
                "sealed_result": base64.b64encode(sealed).decode(),
                "sealed_result_sha256": "f" * 64,
                "receipt": {},
                "model": {"name": "n", "version": "1", "sha256": "a" * 64},
            }
        ).encode()
    )
    with pytest.raises(CallerError, match="hashes to"):
        _stored_result(message)


def test_token_scopes_are_checked_and_tokens_hashed() -> None:
    assert _check_scopes(["jobs:read", "admin", "jobs:read"]) == ("admin", "jobs:read")
    with pytest.raises(CallerError, match="root"):
        _check_scopes(["root"])
    assert token_sha256("obs_x") != "obs_x"
    assert len(token_sha256("obs_x")) == 64
