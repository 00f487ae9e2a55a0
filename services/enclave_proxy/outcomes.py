"""Which failures end a job and which put it back on the queue.

A permanent failure is published as a ``failed`` result and the delivery is acked:
running the job again cannot help. A transient one is nacked with requeue after a
jittered backoff, and the quorum queue's delivery limit dead-letters a job that
keeps failing. The decision looks at the error tree's ``retryable``, never at
messages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.errors import InternalError, ObscuraError, Reason
from shared.link import PeerError
from shared.retry import RetryPolicy

MAX_MESSAGE = 1000
_rng = random.Random()  # noqa: S311 - jitter, not secrecy


@dataclass(frozen=True)
class Verdict:
    """What to do with a delivery whose job raised."""

    retry: bool
    reason: str
    message: str


def classify(exc: BaseException) -> Verdict:
    """Permanent (fail and ack) or transient (nack and requeue) for one error."""
    if isinstance(exc, PeerError):
        # The worker knows best whether its own failure can pass.
        return Verdict(exc.retryable, exc.reason.value, _sentence(exc))
    if isinstance(exc, InternalError):
        return Verdict(False, exc.reason.value, _sentence(exc))
    if isinstance(exc, ObscuraError):
        return Verdict(exc.retryable, exc.reason.value, _sentence(exc))
    if isinstance(exc, TimeoutError):
        return Verdict(True, Reason.TIMEOUT.value, "the job outlived its timeout.")
    # Not from the tree: an adapter missed a translation. Requeue it and let the
    # delivery limit decide rather than fail a job on an error we cannot judge.
    return Verdict(
        True, Reason.INTERNAL.value, f"unexpected {type(exc).__name__} in the proxy."
    )


def _sentence(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:MAX_MESSAGE]


def redelivery_delay(delivery_count: int, policy: RetryPolicy) -> float:
    """Jittered backoff before a requeue, growing with the broker's count."""
    return policy.delay(delivery_count + 1, _rng)
