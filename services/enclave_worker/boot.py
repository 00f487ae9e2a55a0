"""Process start-up for the worker, shared by the enclave and the dev entry point.

Torch reads its thread settings once, when it starts; the enclave's vCPU count
must be in place before anything imports torch, so this module imports the
worker (and with it torch) only after setting them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from services.enclave_worker.settings import WorkerSettings
from shared.logging import configure_logging, enable_loop_debug_from_env, get_logger
from shared.nsm import Nsm


def pin_torch_threads(threads: int) -> None:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


async def serve(settings: WorkerSettings, nsm: Nsm) -> None:
    enable_loop_debug_from_env()
    from services.enclave_worker.server import Worker

    worker = Worker(settings, nsm)
    await worker.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    get_logger(__name__).info("worker stopping")
    await worker.stop()


def run(make_nsm: Callable[[WorkerSettings], Nsm]) -> None:
    settings = WorkerSettings()
    configure_logging("enclave-worker", level=settings.log_level)
    pin_torch_threads(settings.torch_threads)
    asyncio.run(serve(settings, make_nsm(settings)))
