"""HTTP error bodies of the gateway: ``{"error": <stable code>, "message": ...}``.

``ApiError`` is how handlers and helpers say which answer a failure deserves; the
exception handlers below turn it, FastAPI's validation errors and Starlette's
routing errors into the same body shape. Codes are asserted by tests word for word.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from shared.errors import ObscuraError, Reason

RETRY_AFTER_S = 5


class ErrorBody(BaseModel):
    error: str
    message: str


class ApiError(ObscuraError):
    """A failure with the status and stable code the caller will see."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=_reason(status))
        self.status = status
        self.code = code
        self.headers = dict(headers or {})
        if status == 503:
            self.headers.setdefault("Retry-After", str(RETRY_AFTER_S))

    def response(self) -> JSONResponse:
        body = {"error": self.code, "message": str(self)}
        return JSONResponse(body, self.status, headers=self.headers)


def _reason(status: int) -> Reason:
    if status == 503:
        return Reason.UNAVAILABLE
    if status == 404:
        return Reason.NOT_FOUND
    if status in (401, 403):
        return Reason.ACCESS_DENIED
    return Reason.INVALID_REQUEST


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"}
    )


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} does not exist; check the id.")


def install_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        fields = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
        message = f"invalid request parameters {fields}; see the API documentation."
        return ApiError(422, "invalid_request", message).response()

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return ApiError(
                404, "not_found", "no such route; check the URL."
            ).response()
        code = "method_not_allowed" if exc.status_code == 405 else "invalid_request"
        return ApiError(exc.status_code, code, str(exc.detail)).response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
