"""The enclave worker in this process, wired as its proxy wires it.

For benchmarks and tests: a KMS relay to the given endpoint (the proxy's half of
the tunnel), the worker on loopback TCP with the simulated NSM, and a
``WorkerClient`` that speaks to it over the real link.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.enclave_worker.server import Worker
from services.enclave_worker.settings import WorkerSettings
from shared.enclave_protocol import WorkerClient
from shared.link import TcpTransport
from shared.relay import Relay, tcp_connector
from standins.nsm import DevPki, SimulatedNsm


@dataclass(frozen=True)
class InProcessWorker:
    worker: Worker
    client: WorkerClient


@contextlib.asynccontextmanager
async def running_worker(
    kms_url: str,
    bundle: Path,
    hospital_key: str,
    pki: DevPki,
    pcrs: Mapping[int, bytes],
    *,
    debug: bool = False,
    **settings: Any,
) -> AsyncIterator[InProcessWorker]:
    """Start relay and worker; the caller hands credentials and waits for ready."""
    gate = urlsplit(kms_url)
    relay = Relay(tcp_connector(gate.hostname or "", gate.port or 0), name="kms")
    relay_server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    config = WorkerSettings(
        **{
            "transport": "tcp",
            "listen_port": 0,
            "kms_relay_port": relay_server.sockets[0].getsockname()[1],
            "kms_scheme": "http",
            "bundle_dir": bundle,
            "hospital_key_id": hospital_key,
            **settings,
        }
    )
    worker = Worker(config, SimulatedNsm(pki, pcrs, debug=debug))
    await worker.start()
    try:
        client = WorkerClient(TcpTransport("127.0.0.1", worker.listen_port))
        yield InProcessWorker(worker, client)
    finally:
        await worker.stop()
        await relay.aclose()
        relay_server.close()
