"""The encryptor's HTTP API: one internal route that seals a streamed image.

    POST /internal/v1/seal   bearer internal token; body = image bytes
    GET  /healthz            process is up
    GET  /readyz             broker channel open and bucket reachable
    GET  /metrics            Prometheus

Error bodies are ``{"error": <stable code>, "message": <one sentence>}``; the
gateway relays the 503 codes to its caller unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from services.encryptor.metrics import EncryptorMetrics
from services.encryptor.publisher import (
    AmqpJobPublisher,
    BrokerUnavailableError,
    JobPublisher,
)
from services.encryptor.sealing import (
    PayloadTooLargeError,
    Sealer,
    SealerConfig,
    SealRequest,
)
from services.encryptor.settings import EncryptorSettings
from services.encryptor.storage import (
    ObjectStore,
    S3Endpoint,
    S3ObjectStore,
    StorageError,
)
from shared.errors import DependencyError, ObscuraError
from shared.http_middleware import RequestMiddleware
from shared.kms import AwsKeyService
from shared.logging import (
    bind_context,
    enable_loop_debug_from_env,
    get_logger,
    unbind_context,
)

log = get_logger(__name__)
READY_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Dependencies:
    sealer: Sealer
    store: ObjectStore
    publisher: JobPublisher


class SealQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    job_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    view: Literal["L-CC", "R-CC", "L-MLO", "R-MLO"] | None = None
    model: str = Field(min_length=1, max_length=128)
    priority: Literal["routine", "stat"] = "routine"
    nonce: str = Field(pattern=r"^[0-9a-f]{2,128}$")


class SealAnswer(BaseModel):
    object_key: str
    sealed_size: int
    sealed_sha256: str
    body_sha256: str
    body_size: int


def error(status: int, code: str, message: str) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": code, "message": message}, status, headers=headers)


def error_for(exc: BaseException) -> JSONResponse:
    """Map a sealing failure onto the stable codes, most specific first."""
    if isinstance(exc, PayloadTooLargeError):
        return error(413, "payload_too_large", str(exc))
    if isinstance(exc, BrokerUnavailableError):
        return error(503, "broker_unavailable", str(exc))
    if isinstance(exc, StorageError):
        return error(503, "storage_unavailable", str(exc))
    if isinstance(exc, DependencyError) and exc.retryable:
        return error(503, "kms_unavailable", str(exc))
    if isinstance(exc, DependencyError):
        return error(500, "kms_refused", str(exc))
    if isinstance(exc, ObscuraError):
        return error(422, "invalid_request", str(exc))
    return error(500, "internal", "the encryptor failed unexpectedly; see its log.")


async def build_dependencies(
    settings: EncryptorSettings, stack: contextlib.AsyncExitStack
) -> Dependencies:
    """Open KMS, S3 and the broker publisher for the app's lifetime."""
    keys = await stack.enter_async_context(
        AwsKeyService.connect(settings.kms_endpoint(), settings.credentials())
    )
    endpoint = S3Endpoint(
        bucket=settings.bucket,
        region=settings.aws_region,
        endpoint_url=settings.s3_endpoint_url,
        connect_timeout_s=settings.s3_connect_timeout_s,
        read_timeout_s=settings.s3_read_timeout_s,
    )
    store = await stack.enter_async_context(
        S3ObjectStore.connect(endpoint, settings.credentials())
    )
    publisher = AmqpJobPublisher(
        settings.amqp_url.get_secret_value(),
        settings.topology(),
        connect_timeout_s=settings.connect_timeout_s,
        publish_timeout_s=settings.publish_timeout_s,
    )
    stack.push_async_callback(publisher.close)
    config = SealerConfig(
        bucket=settings.bucket,
        key_id=settings.hospital_key_id,
        part_size=settings.part_size,
        chunk_size=settings.chunk_size,
        max_body_bytes=settings.max_upload_bytes,
    )
    return Dependencies(Sealer(keys, store, publisher, config), store, publisher)


def create_app(
    settings: EncryptorSettings, dependencies: Dependencies | None = None
) -> FastAPI:
    """The encryptor app; tests pass ``dependencies`` built around fakes."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        enable_loop_debug_from_env()
        async with contextlib.AsyncExitStack() as stack:
            app.state.deps = dependencies or await build_dependencies(settings, stack)
            # Start-up objects live as long as the process: keep them out of every
            # full collection, which otherwise held the event loop for 0.1 s or more.
            gc.freeze()
            yield

    app = FastAPI(title="Obscura encryptor", lifespan=lifespan)
    metrics = EncryptorMetrics()
    app.state.metrics = metrics
    app.state.deps = dependencies
    _routes(app, settings, metrics)
    app.add_middleware(RequestMiddleware, requests=metrics.requests)
    return app


def _authorised(request: Request, settings: EncryptorSettings) -> bool:
    presented = request.headers.get("authorization", "")
    expected = f"Bearer {settings.internal_token.get_secret_value()}"
    return hmac.compare_digest(presented.encode(), expected.encode())


def _routes(
    app: FastAPI, settings: EncryptorSettings, metrics: EncryptorMetrics
) -> None:
    @app.post("/internal/v1/seal", include_in_schema=False, status_code=201)
    async def seal_route(request: Request) -> Response:
        if not _authorised(request, settings):
            return error(401, "unauthorized", "the internal token is missing or wrong.")
        try:
            query = SealQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
            return error(422, "invalid_request", f"invalid query parameters {fields}.")
        declared = request.headers.get("content-length")
        if (
            declared
            and declared.isdigit()
            and int(declared) > settings.max_upload_bytes
        ):
            return error(
                413,
                "payload_too_large",
                f"declared length {declared} exceeds the limit of"
                f" {settings.max_upload_bytes} bytes; send a smaller image.",
            )
        return await _seal(request, SealRequest(**query.model_dump()), metrics)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        deps: Dependencies = request.app.state.deps
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await deps.store.check()
                await deps.publisher.check()
        except (ObscuraError, TimeoutError) as exc:
            return error(503, "not_ready", f"a dependency is not ready: {exc}")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(
            generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST
        )


async def _seal(
    request: Request, seal_request: SealRequest, metrics: EncryptorMetrics
) -> Response:
    deps: Dependencies = request.app.state.deps
    bind_context(job_id=seal_request.job_id)
    started = time.monotonic()
    try:
        outcome = await deps.sealer.seal(seal_request, _counted(request, metrics))
    except ClientDisconnect:
        log.warning("upload_disconnected", job_id=seal_request.job_id)
        return error(400, "invalid_request", "the client went away mid-upload.")
    except (ObscuraError, OSError) as exc:
        if isinstance(exc, BrokerUnavailableError):
            metrics.publish_failures.inc()
        log.warning("seal_failed", error=type(exc).__name__, reason=_reason(exc))
        return error_for(exc)
    finally:
        unbind_context("job_id")
    metrics.seal_seconds.observe(time.monotonic() - started)
    answer = SealAnswer(**vars(outcome))
    return JSONResponse(answer.model_dump(), status_code=201)


def _reason(exc: BaseException) -> str:
    return exc.reason.value if isinstance(exc, ObscuraError) else "io"


async def _counted(request: Request, metrics: EncryptorMetrics) -> AsyncIterator[bytes]:
    async for piece in request.stream():
        if piece:
            metrics.upload_bytes.inc(len(piece))
            yield piece
