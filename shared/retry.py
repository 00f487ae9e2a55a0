"""Jittered exponential backoff with a finite budget, wrapped around adapters.

Adapters translate library errors into ``shared.errors``; this module retries only
what that tree marks retryable, and gives up when either the attempt count or the
time budget is spent, re-raising the last error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.errors import RETRYABLE
from shared.logging import get_logger

T = TypeVar("T")
log = get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    budget_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        return rng.uniform(0.0, ceiling)


_rng = random.Random()  # noqa: S311 - jitter, not secrecy


async def with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
) -> T:
    """Run ``operation`` until it succeeds, fails permanently or the budget is spent."""
    deadline = time.monotonic() + policy.budget_s
    attempt = 0
    while True:
        try:
            return await operation()
        except RETRYABLE as exc:
            attempt += 1
            delay = policy.delay(attempt, _rng)
            if attempt >= policy.attempts or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "retrying",
                operation=what,
                attempt=attempt,
                delay_s=round(delay, 3),
                reason=exc.reason.value,
            )
            await asyncio.sleep(delay)
