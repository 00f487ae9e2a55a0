"""The FastAPI application: routes, health, metrics and stable error bodies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.results.api import Unauthorized, error, internal
from services.results.components import Components
from services.results.records import JobConflictError, JobNotFoundError
from shared.errors import CallerError, InternalError, RetryableDependencyError
from shared.logging import get_logger

log = get_logger(__name__)


def create_app(components: Components) -> FastAPI:
    app = FastAPI(title="Obscura results", docs_url=None, redoc_url=None)
    app.state.components = components
    app.include_router(internal)
    _add_health(app, components)
    _add_error_handlers(app)
    _add_request_metrics(app, components)
    return app


def _add_health(app: FastAPI, components: Components) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        checks = await components.readiness()
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            components.metrics.render(), media_type="text/plain; version=0.0.4"
        )


def _add_error_handlers(app: FastAPI) -> None:
    async def unauthorized(_: Request, __: Exception) -> Response:
        return error(401, "unauthorized", "The internal token is missing or wrong.")

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error(
            422,
            "invalid_request",
            f"The request field {where or '(body)'} is invalid:"
            f" {first.get('msg', 'malformed')}.",
        )

    async def not_found(_: Request, exc: Exception) -> Response:
        return error(404, "not_found", str(exc))

    async def conflict(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobConflictError)
        return error(409, exc.code, str(exc))

    async def caller(_: Request, exc: Exception) -> Response:
        return error(422, "invalid_request", str(exc))

    async def unavailable(_: Request, exc: Exception) -> Response:
        log.warning("database unavailable", error=str(exc))
        return error(
            503,
            "results_unavailable",
            "The results database is unreachable; retry later.",
        )

    async def internal_error(_: Request, exc: Exception) -> Response:
        log.error("internal error", error=str(exc))
        return error(
            500, "internal", "The results service failed; contact the operator."
        )

    handlers: list[
        tuple[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]
    ] = [
        (Unauthorized, unauthorized),
        (RequestValidationError, invalid),
        (JobNotFoundError, not_found),
        (JobConflictError, conflict),
        (CallerError, caller),
        (RetryableDependencyError, unavailable),
        (InternalError, internal_error),
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, handler)


def _add_request_metrics(app: FastAPI, components: Components) -> None:
    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        components.metrics.requests.labels(
            request.method, path, str(response.status_code)
        ).inc()
        return response
