"""``python -m services.enclave_proxy``: run one proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal

from services.enclave_proxy.service import ProxyService
from services.enclave_proxy.settings import ProxySettings
from shared.logging import configure_logging, enable_loop_debug_from_env, get_logger

log = get_logger("services.enclave_proxy")


async def run(settings: ProxySettings) -> None:
    enable_loop_debug_from_env()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    service = ProxyService(settings)
    try:
        await service.start()
        # Start-up objects live as long as the process: keep them out of every
        # full collection, which otherwise held the event loop for 0.1 s or more.
        gc.freeze()
        await stopping.wait()
        log.info("shutdown_requested")
    finally:
        await service.stop()


def main() -> None:
    settings = ProxySettings()
    configure_logging("enclave-proxy", level=settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
