"""httpx client for the results service's internal API (``/internal/v1``).

Transport failures and 5xx answers become 503 ``results_unavailable``; 404 and
409 answers keep their meaning so handlers can relay them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from services.gateway.errors import ApiError, not_found


def unavailable(detail: str) -> ApiError:
    return ApiError(
        503,
        "results_unavailable",
        f"the results service is unavailable ({detail}); retry later.",
    )


@dataclass(frozen=True)
class Reservation:
    job_id: str
    created: bool
    status: str
    body_sha256: str | None
    nonce: str | None = None


class ResultsClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise unavailable(type(exc).__name__) from exc
        if answer.status_code >= 500:
            raise unavailable(f"HTTP {answer.status_code}")
        return answer

    async def authenticate(self, token: str) -> dict[str, Any] | None:
        answer = await self._call("POST", "/internal/v1/auth", json={"token": token})
        if answer.status_code == 401:
            return None
        return _json(answer)

    async def reserve(self, request: dict[str, Any]) -> Reservation:
        answer = await self._call("POST", "/internal/v1/jobs", json=request)
        if answer.status_code == 409:
            raise ApiError(
                409,
                "idempotency_conflict",
                "an upload with this Idempotency-Key is still in progress; retry"
                " once it finished.",
            )
        body = _json(answer)
        return Reservation(
            job_id=str(body["job_id"]),
            created=bool(body.get("created", answer.status_code == 201)),
            status=str(body.get("status", "received")),
            body_sha256=body.get("body_sha256"),
            nonce=body.get("nonce"),
        )

    async def queued(self, job_id: str, facts: dict[str, Any]) -> None:
        answer = await self._call(
            "POST", f"/internal/v1/jobs/{job_id}/queued", json=facts
        )
        _json(answer)

    async def release(self, job_id: str) -> None:
        """Drop a reservation whose upload failed; a 409 means it moved on."""
        await self._call("DELETE", f"/internal/v1/jobs/{job_id}")

    async def job(self, job_id: str, tenant: str, actor: str) -> dict[str, Any]:
        params = {"tenant": tenant, "actor": actor}
        answer = await self._call("GET", f"/internal/v1/jobs/{job_id}", params=params)
        if answer.status_code == 404:
            raise not_found(f"job {job_id}")
        return _json(answer)

    async def jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        return _json(await self._call("GET", "/internal/v1/jobs", params=params))

    async def result(self, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
        path = f"/internal/v1/jobs/{job_id}/result"
        answer = await self._call("GET", path, params=params)
        if answer.status_code == 404:
            raise not_found(f"job {job_id}")
        if answer.status_code == 409:
            raise ApiError(
                409,
                "result_not_ready",
                f"job {job_id} has no result yet; poll its status first.",
            )
        return _json(answer)

    async def audit(self, params: dict[str, Any]) -> dict[str, Any]:
        return _json(await self._call("GET", "/internal/v1/audit", params=params))

    async def ready(self) -> None:
        answer = await self._call("GET", "/readyz")
        if answer.status_code != 200:
            raise unavailable(f"readyz answered {answer.status_code}")


def _json(answer: httpx.Response) -> dict[str, Any]:
    if answer.status_code >= 400:
        raise ApiError(
            502 if answer.status_code != 422 else 422,
            "results_error" if answer.status_code != 422 else "invalid_request",
            f"the results service refused the call with HTTP {answer.status_code}.",
        )
    try:
        body: dict[str, Any] = answer.json()
    except ValueError as exc:
        raise unavailable("answer is not JSON") from exc
    return body
