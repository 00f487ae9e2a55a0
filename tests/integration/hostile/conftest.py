"""Fixtures for hostile-input tests: the whole mesh (shared with the mesh folder's
fixture) and a real uvicorn gateway over in-memory fakes on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from services.encryptor.app import Dependencies
from services.encryptor.app import create_app as create_encryptor
from services.encryptor.sealing import Sealer, SealerConfig
from services.encryptor.settings import EncryptorSettings
from services.gateway.app import create_app
from services.gateway.server import server_config
from services.gateway.settings import GatewaySettings
from tests.fakes import FakeKeyService
from tests.integration.mesh.conftest import mesh  # noqa: F401
from tests.unit.gateway_helpers import (
    INTERNAL,
    FakeResults,
    MemoryPublisher,
    MemoryStore,
)


@dataclass(frozen=True)
class Served:
    url: str
    results: FakeResults
    store: MemoryStore
    publisher: MemoryPublisher


@asynccontextmanager
async def served_gateway(**settings: Any) -> AsyncIterator[Served]:
    """The gateway app behind the production uvicorn configuration, on 127.0.0.1."""
    results, store, publisher = FakeResults(), MemoryStore(), MemoryPublisher()
    keys = FakeKeyService()
    limit = 64 * 1024 * 1024
    config = SealerConfig("bucket-1", keys.key_ids[0], 5 * 1024 * 1024, 65536, limit)
    encryptor = create_encryptor(
        EncryptorSettings(internal_token=INTERNAL, max_upload_bytes=limit),
        Dependencies(Sealer(keys, store, publisher, config), store, publisher),
    )
    gateway_settings = GatewaySettings(
        internal_token=INTERNAL, host="127.0.0.1", port=0, **settings
    )
    app = create_app(
        gateway_settings,
        results_transport=httpx.ASGITransport(app=results.app()),
        encryptor_transport=httpx.ASGITransport(app=encryptor),
    )
    server = uvicorn.Server(server_config(app, gateway_settings))
    task = asyncio.create_task(server.serve())
    try:
        await _started(server, task)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(f"http://127.0.0.1:{port}", results, store, publisher)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
