"""The gateway's public REST API.

    POST /v1/jobs                  jobs:submit      upload an image (202; 200 replay)
    GET  /v1/jobs                  jobs:read        list, newest first, cursor pages
    GET  /v1/jobs/{id}             jobs:read        status, timestamps, failure
    GET  /v1/jobs/{id}/result      results:read     sealed prediction and receipt
         ?decrypt=true             + results:decrypt  prediction in clear
    GET  /v1/audit                 admin            the tenant's audit trail
    GET  /healthz, /readyz, /metrics

Every answer about a job is scoped to the token's tenant: another tenant's job
is a 404 exactly like a missing one.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict

from services.gateway.auth import Authenticator, Principal
from services.gateway.encryptor_client import EncryptorClient
from services.gateway.errors import ApiError, ErrorBody, install_handlers, not_found
from services.gateway.intake import IntakeLimits
from services.gateway.metrics import GatewayMetrics
from services.gateway.results_client import ResultsClient
from services.gateway.settings import GatewaySettings
from services.gateway.submit import SubmitContext, links, submit
from shared.http_middleware import RequestMiddleware
from shared.logging import enable_loop_debug_from_env

JOB_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_bearer = HTTPBearer(auto_error=False)


class Links(BaseModel):
    self: str
    result: str


class JobAccepted(BaseModel):
    job_id: str
    status: str
    nonce: str | None = None
    links: Links


class Job(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    status: Literal["received", "sealed", "queued", "running", "succeeded", "failed"]


class JobPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None = None


class SealedResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    sealed_result: str
    wrapped_key: str
    receipt: dict[str, Any]
    prediction: dict[str, float] | None = None


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in (401, 403, *statuses, 503)}


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "view": {"enum": ["L-CC", "R-CC", "L-MLO", "R-MLO"]},
                        "model": {"type": "string"},
                        "priority": {"enum": ["routine", "stat"]},
                        "external_ref": {"type": "string"},
                        "file": {"type": "string", "format": "binary"},
                    },
                },
                "encoding": {"file": {"contentType": "image/png, application/dicom"}},
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def create_app(
    settings: GatewaySettings,
    *,
    results_transport: httpx.AsyncBaseTransport | None = None,
    encryptor_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway; tests pass transports that reach fakes instead of servers."""
    internal = {"Authorization": f"Bearer {settings.internal_token.get_secret_value()}"}
    results_http = httpx.AsyncClient(
        base_url=settings.results_url,
        headers=internal,
        timeout=settings.results_timeout_s,
        transport=results_transport,
    )
    encryptor_http = httpx.AsyncClient(
        base_url=settings.encryptor_url,
        headers=internal,
        timeout=httpx.Timeout(settings.encryptor_timeout_s, connect=3.0),
        transport=encryptor_transport,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        enable_loop_debug_from_env()
        # Start-up objects live as long as the process: keep them out of every
        # full collection, which otherwise held the event loop for 0.1 s or more.
        gc.freeze()
        async with results_http, encryptor_http:
            yield

    app = FastAPI(title="Obscura gateway", version="1", lifespan=lifespan)
    metrics = GatewayMetrics()
    results = ResultsClient(results_http)
    app.state.auth = Authenticator(
        results, ttl_s=settings.auth_cache_ttl_s, size=settings.auth_cache_size
    )
    context = SubmitContext(
        results=results,
        encryptor=EncryptorClient(encryptor_http),
        limits=IntakeLimits(
            max_upload_bytes=settings.max_upload_bytes,
            dicom_header_bytes=settings.dicom_header_bytes,
            max_form_overhead_bytes=settings.max_form_overhead_bytes,
            max_parts=settings.max_parts,
            max_field_bytes=settings.max_field_bytes,
            body_idle_timeout_s=settings.body_idle_timeout_s,
            min_body_rate_bps=settings.min_body_rate_bps,
            body_rate_grace_s=settings.body_rate_grace_s,
        ),
        default_model=settings.default_model,
        metrics=metrics,
    )
    install_handlers(app)
    _job_routes(app, context)
    _service_routes(app, context, metrics)
    app.add_middleware(RequestMiddleware, requests=metrics.requests)
    return app


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    auth: Authenticator = request.app.state.auth
    return await auth.principal(request.headers.get("authorization"))


Caller = Annotated[Principal, Depends(principal)]
JobIdPath = Annotated[str, Path()]


def _check_id(job_id: str) -> None:
    if not re.match(JOB_ID, job_id):
        raise not_found(f"job {job_id[:40]!r}")


def _job_routes(app: FastAPI, context: SubmitContext) -> None:
    results = context.results

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses={
            **_errors(400, 408, 409, 413, 415, 422),
            200: {"model": JobAccepted},
        },
        openapi_extra=_UPLOAD_BODY,
    )
    async def create_job(request: Request, caller: Caller) -> JSONResponse:
        """Upload one view; the type is decided by content, never by the label."""
        return await submit(request, caller, context)

    @app.get("/v1/jobs/{job_id}", response_model=Job, responses=_errors(404))
    async def get_job(job_id: JobIdPath, caller: Caller) -> dict[str, Any]:
        caller.require("jobs:read")
        _check_id(job_id)
        job = await results.job(job_id, caller.tenant, caller.token_id)
        return job | {"links": links(job_id)}

    @app.get("/v1/jobs", response_model=JobPage, responses=_errors(422))
    async def list_jobs(
        caller: Caller,
        status: Annotated[
            Literal["received", "sealed", "queued", "running", "succeeded", "failed"]
            | None,
            Query(),
        ] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        caller.require("jobs:read")
        params = _params(caller, status, since, until, cursor, limit)
        return await results.jobs(params)

    @app.get(
        "/v1/jobs/{job_id}/result",
        response_model=SealedResult,
        responses=_errors(404, 409),
    )
    async def get_result(
        job_id: JobIdPath, caller: Caller, decrypt: bool = False
    ) -> dict[str, Any]:
        caller.require("results:read", *(["results:decrypt"] if decrypt else []))
        _check_id(job_id)
        params = {"tenant": caller.tenant, "actor": caller.token_id}
        return await results.result(job_id, params | {"decrypt": str(decrypt).lower()})

    @app.get("/v1/audit", response_model=JobPage, responses=_errors(422))
    async def audit(
        caller: Caller,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        caller.require("admin")
        return await results.audit(_params(caller, None, since, until, cursor, limit))


def _params(
    caller: Principal,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "tenant": caller.tenant,
        "status": status,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "cursor": cursor,
        "limit": limit,
    }
    return {key: value for key, value in values.items() if value is not None}


def _service_routes(
    app: FastAPI, context: SubmitContext, metrics: GatewayMetrics
) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, str]:
        await context.results.ready()
        await context.encryptor.ready()
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route() -> Response:
        return Response(
            generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


__all__ = ["ApiError", "create_app"]
