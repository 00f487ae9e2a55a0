"""Alembic environment: online migrations over asyncpg.

``services.results.db.migrate`` hands in an open synchronous connection (the
async engine's ``run_sync``) through ``config.attributes``; the ``alembic`` command
line, given ``sqlalchemy.url``, opens its own async engine instead.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.results.models import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_own_engine(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("Set sqlalchemy.url or pass a connection to migrate.")
    asyncio.run(_run_own_engine(url))


if context.is_offline_mode():
    raise RuntimeError("Offline migrations are not supported; run them online.")
run_online()
