"""Builders for result messages and jobs used across the results tests."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from services.results.decrypt import result_context
from services.results.records import NewJob, ObjectFields
from services.results.store import JobStore
from shared.envelope import seal_bytes
from shared.keys import KeyService

MODEL = {"name": "nyu-gmic", "version": "1.0.0", "sha256": "ab" * 32}


def new_job(tenant: str, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "tenant": tenant,
        "model": "nyu-gmic",
        "priority": "routine",
        "submitted_by": "tok_test",
        "nonce": secrets.token_hex(16),
    }
    return NewJob(**(values | overrides))


def object_fields() -> ObjectFields:
    return ObjectFields(
        object_key="tenants/t/jobs/j/image.sealed",
        sealed_size=1234,
        sealed_sha256="cd" * 32,
        body_sha256="ef" * 32,
        body_size=1000,
    )


async def queued_job(store: JobStore, tenant: str) -> str:
    created = await store.create(new_job(tenant))
    await store.mark_queued(created.job.id, object_fields())
    return created.job.id


def prediction_plaintext(job_id: str, scores: dict[str, float]) -> bytes:
    document = {"job_id": job_id, "prediction": scores, "view": "L-CC"}
    return json.dumps(document, sort_keys=True).encode()


async def sealed_prediction(
    keys: KeyService,
    key_id: str,
    tenant: str,
    job_id: str,
    scores: dict[str, float],
    context: dict[str, str] | None = None,
) -> bytes:
    plaintext = prediction_plaintext(job_id, scores)
    chosen = context or result_context(tenant, job_id)
    return bytes(await seal_bytes(plaintext, keys, key_id, chosen))


def result_message(
    tenant: str, job_id: str, status: str, sealed: bytes | None = None, **extra: Any
) -> bytes:
    body: dict[str, Any] = {
        "version": 1,
        "job_id": job_id,
        "tenant": tenant,
        "status": status,
        "at": datetime.now(UTC).isoformat(),
    }
    if sealed is not None:
        body |= {
            "sealed_result": base64.b64encode(sealed).decode(),
            "sealed_result_sha256": hashlib.sha256(sealed).hexdigest(),
            "receipt": {"format": "obscura-receipt/1", "record": {"job_id": job_id}},
            "model": MODEL,
        }
    return json.dumps(body | extra).encode()


def job_message(tenant: str, job_id: str) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "job_id": job_id,
            "tenant": tenant,
            "bucket": "obscura-test",
            "object_key": f"tenants/{tenant}/jobs/{job_id}/image.sealed",
            "sealed_size": 10,
            "sealed_sha256": "00" * 32,
            "view": "L-CC",
            "model": "nyu-gmic",
            "priority": "routine",
            "nonce": "aa" * 16,
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


def random_job_id() -> str:
    return str(uuid.uuid4())
