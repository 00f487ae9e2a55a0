"""The results service's internal HTTP API (JSON), called by the gateway.

Every ``/internal/v1`` route requires the shared internal token; none appears in
the public OpenAPI schema. Tenancy is enforced here: a job of another tenant is
answered exactly like a missing one. Reads are audited with their outcome.
"""

from __future__ import annotations

import base64
import hmac
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from services.results.audit import Action, Outcome
from services.results.components import Components
from services.results.decrypt import decrypt_prediction
from services.results.records import (
    JobConflictError,
    JobNotFoundError,
    JobQuery,
    NewJob,
    ObjectFields,
    StoredResult,
)
from services.results.schemas import AuthBody, CreateJobBody, QueuedBody
from services.results.store import valid_job_id
from services.results.tokens import verify_token
from shared.errors import (
    DependencyError,
    IntegrityError,
    InternalError,
    KeyContextMismatchError,
    RetryableDependencyError,
)
from shared.logging import get_logger
from shared.messages import Tenant

log = get_logger(__name__)

TenantQuery = Annotated[Tenant, Query()]
Status = Annotated[
    str | None, Query(pattern="^(received|queued|running|succeeded|failed)$")
]


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


Deps = Annotated[Components, Depends(_components)]


class Unauthorized(Exception):
    """The internal token was missing or wrong."""


async def require_internal_token(request: Request) -> None:
    expected = _components(request).settings.internal_token.get_secret_value()
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.encode(), expected.encode()
    ):
        raise Unauthorized


internal = APIRouter(
    prefix="/internal/v1",
    include_in_schema=False,
    dependencies=[Depends(require_internal_token)],
)


@internal.post("/auth")
async def authenticate(body: AuthBody, deps: Deps) -> Response:
    info = await verify_token(deps.engine, body.token)
    if info is None:
        return error(401, "unauthorized", "The bearer token is unknown or revoked.")
    return JSONResponse(info.to_json())


@internal.post("/jobs")
async def create_job(body: CreateJobBody, deps: Deps) -> Response:
    created = await deps.store.create(NewJob(**body.model_dump()))
    payload = {**created.job.to_json(), "created": created.created}
    if not created.created:
        payload["body_sha256"] = created.job.body_sha256
    return JSONResponse(payload, status_code=201 if created.created else 200)


@internal.post("/jobs/{job_id}/queued")
async def mark_queued(job_id: str, body: QueuedBody, deps: Deps) -> Response:
    job = await deps.store.mark_queued(
        _job_id(job_id), ObjectFields(**body.model_dump())
    )
    return JSONResponse(job.to_json())


@internal.delete("/jobs/{job_id}", status_code=204)
async def delete_job(job_id: str, deps: Deps) -> Response:
    await deps.store.delete_received(_job_id(job_id))
    return Response(status_code=204)


@internal.get("/jobs/{job_id}")
async def get_job(
    job_id: str, tenant: TenantQuery, deps: Deps, actor: str | None = None
) -> Response:
    job = await deps.store.get(tenant, job_id)
    outcome = Outcome.OK if job is not None else Outcome.NOT_FOUND
    await deps.audit.record(
        tenant=tenant,
        actor=actor,
        action=Action.JOB_READ,
        outcome=outcome,
        job_id=job_id,
    )
    if job is None:
        raise _not_found(job_id)
    return JSONResponse(job.to_json())


@internal.get("/jobs")
async def list_jobs(
    tenant: TenantQuery,
    deps: Deps,
    status: Status = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    actor: str | None = None,
) -> Response:
    query = JobQuery(
        tenant=tenant,
        limit=deps.page_limit(limit),
        status=status,
        since=since,
        until=until,
        cursor=cursor,
    )
    page = await deps.store.list_jobs(query)
    await deps.audit.record(
        tenant=tenant, actor=actor, action=Action.JOB_LIST, outcome=Outcome.OK
    )
    items = [job.to_json() for job in page.items]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


@internal.get("/jobs/{job_id}/result")
async def get_result(
    job_id: str,
    tenant: TenantQuery,
    deps: Deps,
    actor: str | None = None,
    decrypt: bool = False,
) -> Response:
    action = Action.RESULT_DECRYPT if decrypt else Action.RESULT_READ
    try:
        _, stored = await deps.store.result(tenant, job_id)
    except JobNotFoundError:
        await deps.audit.record(
            tenant=tenant,
            actor=actor,
            action=action,
            outcome=Outcome.NOT_FOUND,
            job_id=job_id,
        )
        raise
    except JobConflictError:
        await deps.audit.record(
            tenant=tenant,
            actor=actor,
            action=action,
            outcome=Outcome.NOT_READY,
            job_id=job_id,
        )
        raise
    payload = _result_json(stored)
    if decrypt:
        answer = await _decrypt(deps, stored, tenant, actor)
        if isinstance(answer, Response):
            return answer
        payload["prediction"] = answer
    await deps.audit.record(
        tenant=tenant, actor=actor, action=action, outcome=Outcome.OK, job_id=job_id
    )
    return JSONResponse(payload)


async def _decrypt(
    deps: Components, stored: StoredResult, tenant: str, actor: str | None
) -> dict[str, Any] | Response:
    """The prediction, or the error response after auditing why there is none."""
    try:
        return await decrypt_prediction(deps.keys, stored, tenant)
    except (DependencyError, IntegrityError, InternalError) as exc:
        outcome, response = _decrypt_failure(exc, stored.job_id)
        reason = exc.reason.value
    log.warning("decrypt refused", job_id=stored.job_id, reason=reason)
    await deps.audit.record(
        tenant=tenant,
        actor=actor,
        action=Action.RESULT_DECRYPT,
        outcome=outcome,
        job_id=stored.job_id,
        detail=reason,
    )
    return response


def _decrypt_failure(exc: Exception, job_id: str) -> tuple[Outcome, JSONResponse]:
    if isinstance(exc, RetryableDependencyError):
        return Outcome.ERROR, error(
            503,
            "kms_unavailable",
            "KMS did not answer the decrypt in time; retry later.",
        )
    if isinstance(exc, KeyContextMismatchError | DependencyError):
        return Outcome.DENIED, error(
            403,
            "decrypt_refused",
            f"KMS or the envelope refused to decrypt the result of job {job_id};"
            " check the hospital key policy for the results principal.",
        )
    return Outcome.ERROR, error(
        500,
        "result_integrity",
        f"the stored result of job {job_id} failed authentication;"
        " contact the operator.",
    )


def _result_json(stored: StoredResult) -> dict[str, Any]:
    return {
        "job_id": stored.job_id,
        "sealed_result": base64.b64encode(stored.sealed_result).decode(),
        "sealed_result_sha256": stored.sealed_result_sha256,
        "wrapped_key": base64.b64encode(stored.wrapped_key).decode(),
        "key_id": stored.key_id,
        "encryption_context": dict(stored.encryption_context),
        "receipt": dict(stored.receipt),
        "model": {
            "name": stored.model_name,
            "version": stored.model_version,
            "sha256": stored.model_sha256,
        },
    }


@internal.get("/audit")
async def list_audit(
    tenant: TenantQuery,
    deps: Deps,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    actor: str | None = None,
) -> Response:
    page = await deps.audit.events(
        tenant, limit=deps.page_limit(limit), since=since, until=until, cursor=cursor
    )
    await deps.audit.record(
        tenant=tenant, actor=actor, action=Action.AUDIT_READ, outcome=Outcome.OK
    )
    items = [event.to_json() for event in page.items]
    return JSONResponse({"items": items, "next_cursor": page.next_cursor})


def _job_id(job_id: str) -> str:
    if not valid_job_id(job_id):
        raise _not_found(job_id)
    return job_id


def _not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"job {job_id[:64]} does not exist for this tenant; check the job id."
    )
