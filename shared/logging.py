"""structlog set-up, called once by each entry point, never on import.

Events are key-value lines. Request id, job id and delivery tag are bound through
contextvars (``bind_context``) so every line of a job carries them. Nothing here
knows what a pixel or a key is: callers must never pass such values as fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(service: str, *, level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library's logging to stderr."""
    global _configured
    if _configured:
        return
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    # Client libraries log every request at INFO; our own lines already say what
    # matters, and a URL with a presigned query has no place in a log.
    for noisy in ("httpx", "httpcore", "botocore", "aiobotocore", "aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(
            max(logging.WARNING, logging.getLevelName(level.upper()))
        )
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


bind_context = structlog.contextvars.bind_contextvars
unbind_context = structlog.contextvars.unbind_contextvars


LOOP_DEBUG_ENV = "OBSCURA_LOOP_SLOW_CALLBACK_S"
LOOP_DEBUG_HANDLER = "obscura-loop-debug"


def enable_loop_debug_from_env() -> float | None:
    """Put the running loop in debug mode when ``OBSCURA_LOOP_SLOW_CALLBACK_S`` is set.

    asyncio then logs every callback that holds the loop longer than that many
    seconds ("Executing <Handle ...> took X seconds") on the ``asyncio`` logger at
    WARNING; those lines go to stderr prefixed with their Unix time. Call it from
    a coroutine of each entry point; returns the threshold, or None when unset.
    """
    value = os.environ.get(LOOP_DEBUG_ENV, "").strip()
    if not value:
        return None
    try:
        threshold = float(value)
    except ValueError as exc:
        raise ValueError(
            f"{LOOP_DEBUG_ENV}={value!r} is not a number of seconds; set e.g. 0.1."
        ) from exc
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = threshold
    logger = logging.getLogger("asyncio")
    if not any(h.name == LOOP_DEBUG_HANDLER for h in logger.handlers):
        # Timestamped, so a slow callback can be matched to what else ran then.
        handler = logging.StreamHandler(sys.stderr)
        handler.name = LOOP_DEBUG_HANDLER
        handler.setFormatter(logging.Formatter("%(created).3f asyncio %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING)
    return threshold
