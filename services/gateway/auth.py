"""Bearer tokens, checked by the results service and cached here briefly.

Only positive answers are cached, keyed by the token's SHA-256 so no token is
kept in memory longer than the request; a revoked token stops working within
``auth_cache_ttl_s``. The cache is bounded: past its size it is cleared whole,
which costs one round trip per active token and needs no bookkeeping.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from services.gateway.errors import ApiError, unauthorized
from services.gateway.results_client import ResultsClient

SCOPES = frozenset(
    {"jobs:submit", "jobs:read", "results:read", "results:decrypt", "admin"}
)


@dataclass(frozen=True)
class Principal:
    token_id: str
    tenant: str
    scopes: frozenset[str]
    name: str

    def require(self, *scopes: str) -> None:
        missing = sorted(set(scopes) - self.scopes)
        if missing:
            raise ApiError(
                403,
                "forbidden",
                f"the token lacks scope {', '.join(missing)}; ask for a token"
                " that has it.",
            )


class Authenticator:
    def __init__(self, results: ResultsClient, *, ttl_s: float, size: int) -> None:
        self._results = results
        self._ttl_s = ttl_s
        self._size = size
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def principal(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = await self._results.authenticate(token)
        if answer is None:
            raise unauthorized("the bearer token is not valid; present a valid token.")
        principal = Principal(
            token_id=str(answer["token_id"]),
            tenant=str(answer["tenant"]),
            scopes=frozenset(str(s) for s in answer.get("scopes", [])),
            name=str(answer.get("name", "")),
        )
        if len(self._cache) >= self._size:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl_s, principal)
        return principal


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized(
            "the request has no bearer token; send Authorization: Bearer <token>."
        )
    return token.strip()
