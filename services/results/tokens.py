"""API tokens: minted once, stored only as their SHA-256, checked by hash lookup.

A token is ``obs_`` followed by 32 random bytes in URL-safe base64; its id is a
short random handle that appears in audit rows instead of the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.db import make_engine, transaction
from services.results.models import api_tokens
from services.results.store import now
from shared.errors import CallerError

SCOPES = frozenset(
    {"jobs:submit", "jobs:read", "results:read", "results:decrypt", "admin"}
)
TOKEN_PREFIX = "obs_"  # noqa: S105 - a marker, not a secret
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    tenant: str
    scopes: tuple[str, ...]
    name: str

    def to_json(self) -> dict[str, object]:
        return {
            "token_id": self.token_id,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "name": self.name,
        }


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(sorted(set(scopes)))
    unknown = sorted(set(chosen) - SCOPES)
    if unknown or not chosen:
        raise CallerError(
            f"scopes {unknown or '(none)'} are not valid; choose from {sorted(SCOPES)}."
        )
    return chosen


async def create_token(
    engine: AsyncEngine, tenant: str, scopes: Iterable[str], name: str
) -> str:
    """Store a new token's hash and return the token, which is never stored."""
    chosen = _check_scopes(scopes)
    if not _TENANT.match(tenant):
        raise CallerError(
            f"tenant {tenant!r} is not valid; use 1-63 lowercase letters, digits"
            " and hyphens, starting with a letter or digit."
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with transaction(engine) as conn:
        await conn.execute(
            insert(api_tokens).values(
                id="tok_" + secrets.token_hex(8),
                tenant=tenant,
                name=name,
                scopes=list(chosen),
                token_sha256=token_sha256(token),
                created_at=now(),
            )
        )
    return token


async def verify_token(engine: AsyncEngine, token: str) -> TokenInfo | None:
    """The token's owner and scopes, or None for an unknown or revoked token."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    statement = select(api_tokens).where(
        api_tokens.c.token_sha256 == token_sha256(token),
        api_tokens.c.revoked_at.is_(None),
    )
    async with transaction(engine) as conn:
        row = (await conn.execute(statement)).mappings().first()
    if row is None:
        return None
    return TokenInfo(row["id"], row["tenant"], tuple(row["scopes"]), row["name"])


async def _mint(db_url: str, tenant: str, scopes: Iterable[str], name: str) -> str:
    engine = make_engine(db_url, pool_size=1)
    try:
        return await create_token(engine, tenant, scopes, name)
    finally:
        await engine.dispose()


def mint_token(db_url: str, tenant: str, scopes: Iterable[str], name: str) -> str:
    """What ``obscura dev token`` calls: mint one token, print it once, forget it."""
    return asyncio.run(_mint(db_url, tenant, list(scopes), name))
