"""Streams an upload to the encryptor's ``/internal/v1/seal`` with httpx.

The body is an async iterator, so httpx sends it chunk by chunk with chunked
transfer encoding and at most one chunk is in memory here. The encryptor's 503
codes (``broker_unavailable``, ``kms_unavailable``, ``storage_unavailable``) and
its 413 are relayed to the caller as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.gateway.errors import ApiError

_RELAYED = frozenset({413, 503})


class EncryptorClient:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def seal(
        self, params: dict[str, str], body: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        try:
            answer = await self._client.post(
                "/internal/v1/seal", params=params, content=body
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                503,
                "encryptor_unavailable",
                f"the encryptor is unavailable ({type(exc).__name__}); retry later.",
            ) from exc
        if answer.status_code == 201:
            sealed: dict[str, Any] = answer.json()
            return sealed
        raise _relay(answer)

    async def ready(self) -> None:
        try:
            answer = await self._client.get("/readyz")
        except httpx.HTTPError as exc:
            raise ApiError(503, "encryptor_unavailable", str(exc)) from exc
        if answer.status_code != 200:
            raise _relay(answer)


def _relay(answer: httpx.Response) -> ApiError:
    try:
        body = answer.json()
        code, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "encryptor_error", f"HTTP {answer.status_code}"
    if answer.status_code in _RELAYED:
        return ApiError(answer.status_code, code, message)
    return ApiError(
        502, "encryptor_error", f"the encryptor refused the upload: {message}"
    )
