"""Results-service fixtures: a fresh PostgreSQL database per session, migrated;
a random broker topology per test, deleted afterwards; an ASGI client."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.results.app import create_app
from services.results.components import Components
from services.results.db import make_engine, migrate
from services.results.settings import ResultsSettings
from shared.broker import Topology, connect, delete
from tests.fakes import FakeKeyService

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
INTERNAL_TOKEN = "internal-" + secrets.token_hex(16)
KEY_ID = "alias/obscura-hospital-test"


def db_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def random_database() -> str:
    return f"obscura_test_{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def results_db_url() -> Iterator[str]:
    name = random_database()
    asyncio.run(create_database(name))
    try:
        asyncio.run(migrate(db_url(name)))
        yield db_url(name)
    finally:
        asyncio.run(drop_database(name))


@pytest.fixture
async def engine(results_db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(results_db_url, pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture
def tenant() -> str:
    return "t-" + secrets.token_hex(5)


@pytest.fixture
def settings(results_db_url: str) -> ResultsSettings:
    return ResultsSettings(
        database_url=results_db_url,
        internal_token=INTERNAL_TOKEN,
        amqp_url=AMQP_URL,
    )


@pytest.fixture
def fake_keys() -> FakeKeyService:
    return FakeKeyService(KEY_ID)


@pytest.fixture
def components(
    settings: ResultsSettings, engine: AsyncEngine, fake_keys: FakeKeyService
) -> Components:
    return Components(settings, engine, fake_keys)


@pytest.fixture
async def client(components: Components) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(components))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://results.test",
        headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
    ) as client:
        yield client


@pytest.fixture
async def topology() -> AsyncIterator[Topology]:
    chosen = Topology.prefixed("test-results-" + secrets.token_hex(4))
    yield chosen
    connection = await connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await delete(channel, chosen)
    finally:
        await connection.close()
