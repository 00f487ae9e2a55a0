"""The PostgreSQL edge: async engine on asyncpg, migrations, error translation.

Connection-level failures (refused, reset, timed out, server shutting down) are
``RetryableDependencyError`` so consumers requeue and the API answers 503; any
other database error is a bug of ours and surfaces as ``InternalError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.errors import InternalError, Reason, RetryableDependencyError

MIGRATIONS = Path(__file__).parent / "migrations"

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
)
_CAUGHT: tuple[type[Exception], ...] = (DBAPIError, OSError, TimeoutError)


def make_engine(
    url: str, *, pool_size: int = 10, timeout_s: float = 5.0
) -> AsyncEngine:
    """An engine whose every connect and statement has a finite timeout."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeout_s,
        connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
    )


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    cause = getattr(exc, "orig", None) or exc.__cause__
    original = getattr(cause, "__cause__", None) or cause
    return isinstance(exc, _CONNECTION_ERRORS) or isinstance(
        original, _CONNECTION_ERRORS
    )


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction, with database failures translated into the error tree."""
    try:
        async with engine.begin() as connection:
            yield connection
    except _CAUGHT as exc:
        if _is_connection_failure(exc):
            raise RetryableDependencyError(
                f"PostgreSQL is unreachable: {type(exc).__name__}.",
                reason=Reason.UNAVAILABLE,
            ) from exc
        raise InternalError(
            f"PostgreSQL rejected a statement: {type(exc).__name__}."
        ) from exc


async def ping(engine: AsyncEngine) -> bool:
    """True when a trivial query answers; readiness uses it."""
    try:
        async with transaction(engine) as connection:
            await connection.execute(text("SELECT 1"))
    except (RetryableDependencyError, InternalError):
        return False
    return True


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(url: str, revision: str = "head") -> None:
    """Run ``alembic upgrade`` on the database at ``url``, inside this event loop."""
    engine = make_engine(url, pool_size=1)
    try:
        async with transaction(engine) as connection:
            await connection.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()
