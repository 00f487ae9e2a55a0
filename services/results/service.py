"""Running the results service: engine, KMS client, consumers and the HTTP server.

Start-up order matters: the database engine and KMS client exist before the
consumers start, so the first delivered message can already be committed; on
shutdown the consumers stop first, so no message is in flight when the engine
goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import uvicorn

from services.results.app import create_app
from services.results.components import Components
from services.results.consumers import Consumers
from services.results.db import make_engine
from services.results.decrypt import open_key_service
from services.results.handlers import MessageHandler
from services.results.settings import ResultsSettings
from services.results.store import JobStore
from shared.errors import ObscuraError
from shared.logging import enable_loop_debug_from_env, get_logger

log = get_logger(__name__)


@contextlib.asynccontextmanager
async def running(settings: ResultsSettings) -> AsyncIterator[Components]:
    """Everything the service needs, started in order and stopped in reverse."""
    engine = make_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        timeout_s=settings.db_timeout_s,
    )
    try:
        async with open_key_service(settings) as keys:
            consumers = Consumers(
                MessageHandler(JobStore(engine)),
                settings.amqp_url.get_secret_value(),
                settings.topology(),
                prefetch=settings.prefetch,
                requeue_backoff_s=settings.requeue_backoff_s,
            )
            components = Components(settings, engine, keys, consumers)
            consumers.metrics = components.metrics
            await consumers.start()
            sweeper = asyncio.create_task(sweep_abandoned(JobStore(engine), settings))
            try:
                yield components
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
                await consumers.stop()
    finally:
        await engine.dispose()


async def sweep_abandoned(store: JobStore, settings: ResultsSettings) -> None:
    """Every ``sweep_interval_s``, fail reservations whose upload never finished."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        cutoff = datetime.now(UTC) - timedelta(seconds=settings.received_ttl_s)
        try:
            failed = await store.fail_abandoned(cutoff)
        except ObscuraError as exc:
            log.warning(
                "abandoned-upload sweep failed",
                reason=exc.reason.value,
                retry_in_s=settings.sweep_interval_s,
            )
            continue
        if failed:
            log.info("abandoned uploads failed", jobs=len(failed))


async def serve(settings: ResultsSettings) -> None:
    enable_loop_debug_from_env()
    async with running(settings) as components:
        config = uvicorn.Config(
            create_app(components),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
        )
        # Start-up objects live as long as the process: keep them out of every
        # full collection, which otherwise held the event loop for 0.1 s or more.
        gc.freeze()
        log.info("results service listening", host=settings.host, port=settings.port)
        await uvicorn.Server(config).serve()
