"""``POST /v1/jobs``: validate by content, reserve, stream to the encryptor.

    authenticate -> read fields and the image prefix -> sniff and inspect (415,
    422; no job yet) -> reserve at results -> stream prefix + rest to the
    encryptor (413 past the cap) -> tell results ``queued`` -> 202

Any failure after the reservation releases it again, so a failed upload leaves
no job behind; the encryptor has already aborted or deleted its object.
A repeated ``Idempotency-Key`` is answered 200 with the original job when the
body hashes the same, 422 ``idempotency_key_reused`` when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.multipart import parse_options_header

from services.gateway.auth import Principal
from services.gateway.encryptor_client import EncryptorClient
from services.gateway.errors import ApiError
from services.gateway.intake import (
    IntakeLimits,
    MultipartReader,
    Upload,
    counted,
    inspect_upload,
    invalid,
    paced,
    too_large,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.results_client import Reservation, ResultsClient
from shared.imaging import ImageKind
from shared.logging import bind_context, get_logger

log = get_logger(__name__)
QUEUED_ATTEMPTS = 3
QUEUED_DELAY_S = 0.5
_IDEMPOTENCY_KEY_MAX = 255


class JobFields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    view: Literal["L-CC", "R-CC", "L-MLO", "R-MLO"] | None = None
    model: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    priority: Literal["routine", "stat"] = "routine"
    external_ref: str | None = Field(default=None, max_length=128)


@dataclass(frozen=True)
class SubmitContext:
    results: ResultsClient
    encryptor: EncryptorClient
    limits: IntakeLimits
    default_model: str
    metrics: GatewayMetrics


def links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


class _Guard:
    """Remembers the error the body raised, whatever httpx turns it into."""

    def __init__(self, source: AsyncIterator[bytes], metrics: GatewayMetrics) -> None:
        self._source = source
        self._metrics = metrics
        self.failure: ApiError | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._source:
                self._metrics.upload_bytes.inc(len(piece))
                yield piece
        except ApiError as exc:
            self.failure = exc
            raise


async def submit(
    request: Request, principal: Principal, context: SubmitContext
) -> JSONResponse:
    principal.require("jobs:submit")
    fields, upload = await _read(request, context)
    view = _resolve_view(fields.view, upload)
    nonce = secrets.token_hex(16)
    reservation = await context.results.reserve(
        {
            "tenant": principal.tenant,
            "idempotency_key": _idempotency_key(request),
            "view": view,
            "model": fields.model,
            "priority": fields.priority,
            "external_ref": fields.external_ref,
            "submitted_by": principal.token_id,
            "nonce": nonce,
        }
    )
    if not reservation.created:
        return await _replay(reservation, upload)
    bind_context(job_id=reservation.job_id)
    params = {
        "tenant": principal.tenant,
        "job_id": reservation.job_id,
        "model": fields.model,
        "priority": fields.priority,
        "nonce": nonce,
    } | ({"view": view} if view else {})
    sealed = await _seal(context, reservation.job_id, params, upload)
    await _mark_queued(context.results, reservation.job_id, sealed, view)
    body = {
        "job_id": reservation.job_id,
        "status": "queued",
        "nonce": nonce,
        "links": links(reservation.job_id),
    }
    return JSONResponse(body, status_code=202)


async def _read(request: Request, context: SubmitContext) -> tuple[JobFields, Upload]:
    limits = context.limits
    cap = limits.max_upload_bytes + limits.max_form_overhead_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large(limits.max_upload_bytes)
    raw = counted(paced(aiter(request.stream()), limits), cap)
    media, options = parse_options_header(request.headers.get("content-type", ""))
    if media == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise invalid("multipart body has no boundary; set it in Content-Type.")
        reader = MultipartReader(raw, boundary, limits)
        values, first = await reader.read_fields()
        fields = _fields(values, context.default_model)
        return fields, await inspect_upload(reader.file_bytes(first), limits)
    values = {k: v for k, v in request.query_params.items()}
    fields = _fields(values, context.default_model)
    return fields, await inspect_upload(raw, limits)


def _fields(values: dict[str, str], default_model: str) -> JobFields:
    try:
        return JobFields.model_validate({"model": default_model} | values)
    except ValidationError as exc:
        names = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
        raise invalid(
            f"invalid job fields {names}; view is one of L-CC, R-CC, L-MLO,"
            " R-MLO and priority routine or stat."
        ) from exc


def _resolve_view(field_view: str | None, upload: Upload) -> str | None:
    """DICOM tags decide the view; a field naming another view is refused."""
    if upload.kind is ImageKind.PNG:
        if field_view is None:
            raise invalid("a PNG upload needs the view field; send L-CC, R-CC, ...")
        return field_view
    if upload.view is None and field_view is None:
        raise ApiError(
            422,
            "invalid_dicom",
            "DICOM tags do not state the view and laterality; send the view field.",
        )
    if upload.view and field_view and upload.view != field_view:
        raise invalid(
            f"view field {field_view} conflicts with the DICOM tags, which say"
            f" {upload.view}; send the matching view or omit the field."
        )
    return upload.view or field_view


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= _IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise invalid(
            f"Idempotency-Key must be 1 to {_IDEMPOTENCY_KEY_MAX} printable"
            " characters; send a UUID."
        )
    return key


async def _replay(reservation: Reservation, upload: Upload) -> JSONResponse:
    """Same key: read the body (to compare its hash, never to store it)."""
    if reservation.body_sha256 is None:
        raise ApiError(
            409,
            "idempotency_conflict",
            "the job with this Idempotency-Key has no recorded upload yet; retry"
            " later.",
        )
    async for _piece in upload.body():
        pass
    if upload.sha256() != reservation.body_sha256:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different upload; use a new key.",
        )
    body = {
        "job_id": reservation.job_id,
        "status": reservation.status,
        "nonce": reservation.nonce,
        "links": links(reservation.job_id),
    }
    return JSONResponse(body, status_code=200)


async def _seal(
    context: SubmitContext, job_id: str, params: dict[str, str], upload: Upload
) -> dict[str, Any]:
    guard = _Guard(upload.body(), context.metrics)
    try:
        sealed = await context.encryptor.seal(params, aiter(guard))
    except BaseException as exc:
        await _release(context.results, job_id)
        failure = guard.failure or exc
        code = failure.code if isinstance(failure, ApiError) else "internal"
        context.metrics.submissions.labels(code).inc()
        log.warning("upload_failed", job_id=job_id, error=code)
        if failure is exc:
            raise
        raise failure from exc
    if sealed.get("body_sha256") != upload.sha256():
        log.error("body_hash_mismatch", job_id=job_id)
    context.metrics.submissions.labels("queued").inc()
    return sealed


async def _release(results: ResultsClient, job_id: str) -> None:
    # Shielded: a caller that hung up must not leave a reservation behind.
    with contextlib.suppress(ApiError):
        await asyncio.shield(results.release(job_id))


async def _mark_queued(
    results: ResultsClient, job_id: str, sealed: dict[str, Any], view: str | None
) -> None:
    """Record the object; the job message is already confirmed by the broker.

    If results stays unreachable the job still runs: its result message makes
    the results service move the reservation forward, so 202 stays true.
    """
    facts = {
        key: sealed[key]
        for key in (
            "object_key",
            "sealed_size",
            "sealed_sha256",
            "body_sha256",
            "body_size",
        )
    } | {"view": view}
    for attempt in range(QUEUED_ATTEMPTS):
        try:
            await results.queued(job_id, facts)
            return
        except ApiError as exc:
            if exc.status != 503 or attempt + 1 == QUEUED_ATTEMPTS:
                log.error("queued_not_recorded", job_id=job_id, error=exc.code)
                return
            log.warning("queued_retry", job_id=job_id, delay_s=QUEUED_DELAY_S)
            await asyncio.sleep(QUEUED_DELAY_S)
