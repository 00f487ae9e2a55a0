"""The proxy's HTTP side: liveness, readiness and Prometheus metrics.

``/readyz`` answers 200 only while the proxy consumes and its worker is ready,
so an orchestrator routes no work to (and a deploy waits for) a proxy that
cannot run jobs; otherwise 503 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.enclave_proxy.metrics import ProxyMetrics
from shared.errors import InternalError


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str | None = None


def health_app(readiness: Callable[[], Readiness], metrics: ProxyMetrics) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        state = readiness()
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": "not_ready", "reason": state.reason}, status_code=503
        )

    async def metrics_page(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_page),
        ]
    )


class _QuietServer(uvicorn.Server):
    # The proxy owns SIGTERM and shuts uvicorn down itself, in order.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthServer:
    """uvicorn in a task of the proxy's own loop."""

    def __init__(self, app: Starlette, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off"
        )
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        sockets = [s for server in self._server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else 0

    async def start(self, timeout_s: float = 5.0) -> None:
        self._task = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    await self._task
                    raise InternalError(
                        f"the health server on port {self._server.config.port} "
                        "exited while starting; is the port taken?"
                    )
                await asyncio.sleep(0.01)

    async def stop(self, timeout_s: float = 5.0) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout_s)
        except TimeoutError:
            task.cancel()
