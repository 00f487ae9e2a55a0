import pytest

from shared.errors import (
    PermanentDependencyError,
    Reason,
    RetryableDependencyError,
)
from shared.retry import RetryPolicy, with_retry

FAST = RetryPolicy(attempts=4, base_delay_s=0.001, max_delay_s=0.002, budget_s=1.0)


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


async def test_with_retry_recovers_after_transient_failures() -> None:
    op = Flaky([RetryableDependencyError("slow", reason=Reason.THROTTLED)] * 3)
    assert await with_retry(op, FAST, what="test") == "done"
    assert op.calls == 4


async def test_with_retry_gives_up_after_attempts() -> None:
    op = Flaky([RetryableDependencyError("slow")] * 10)
    with pytest.raises(RetryableDependencyError):
        await with_retry(op, FAST, what="test")
    assert op.calls == FAST.attempts


async def test_with_retry_never_retries_permanent_errors() -> None:
    op = Flaky([PermanentDependencyError("no", reason=Reason.ACCESS_DENIED)])
    with pytest.raises(PermanentDependencyError) as caught:
        await with_retry(op, FAST, what="test")
    assert caught.value.reason is Reason.ACCESS_DENIED
    assert op.calls == 1


async def test_with_retry_stops_when_budget_is_spent() -> None:
    policy = RetryPolicy(
        attempts=100, base_delay_s=0.05, max_delay_s=0.05, budget_s=0.0
    )
    op = Flaky([RetryableDependencyError("slow")] * 100)
    with pytest.raises(RetryableDependencyError):
        await with_retry(op, policy, what="test")
    assert op.calls == 1


def test_retry_policy_delay_is_jittered_below_ceiling() -> None:
    import random

    rng = random.Random(7)
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=0.4)
    delays = [policy.delay(attempt, rng) for attempt in range(1, 8)]
    assert all(0.0 <= d <= 0.4 for d in delays)
    assert len(set(delays)) == len(delays)
