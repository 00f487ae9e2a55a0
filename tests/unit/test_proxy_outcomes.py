from __future__ import annotations

import pytest

from services.enclave_proxy.outcomes import classify, redelivery_delay
from shared.errors import (
    CallerError,
    IntegrityError,
    InternalError,
    KeyContextMismatchError,
    ObscuraError,
    PermanentDependencyError,
    Reason,
    RetryableDependencyError,
    UnsupportedImageError,
)
from shared.link import LinkClosedError, LinkTimeoutError, PeerError, ProtocolError
from shared.retry import RetryPolicy


def _peer(reason: Reason, retryable: bool) -> PeerError:
    return PeerError("boom", reason=reason, retryable=retryable, job_id=None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (_peer(Reason.CIPHERTEXT_TAMPERED, False), "ciphertext_tampered"),
        (ProtocolError("bad frame"), "internal"),
        (PermanentDependencyError("gone", reason=Reason.NOT_FOUND), "not_found"),
        (KeyContextMismatchError("other job"), "key_context_mismatch"),
        (IntegrityError("tampered"), "ciphertext_tampered"),
        (UnsupportedImageError("gif"), "unsupported_image"),
        (CallerError("odd nonce"), "invalid_request"),
        (InternalError("bug"), "internal"),
    ],
)
def test_classify_permanent_errors_fail_the_job(
    error: ObscuraError, reason: str
) -> None:
    verdict = classify(error)

    assert verdict.retry is False
    assert verdict.reason == reason


@pytest.mark.parametrize(
    "error",
    [
        LinkClosedError("gone"),
        LinkTimeoutError("slow"),
        _peer(Reason.THROTTLED, True),
        RetryableDependencyError("kms throttled", reason=Reason.THROTTLED),
        TimeoutError(),
        ValueError("an adapter missed a translation"),
    ],
)
def test_classify_transient_errors_requeue_the_job(error: Exception) -> None:
    assert classify(error).retry is True


def test_classify_peer_error_keeps_the_workers_reason() -> None:
    verdict = classify(_peer(Reason.MODEL_UNAVAILABLE, True))

    assert (verdict.retry, verdict.reason) == (True, "model_unavailable")


def test_classify_truncates_long_messages() -> None:
    assert len(classify(InternalError("x" * 5000)).message) == 1000


def test_redelivery_delay_stays_within_the_policy_ceiling() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=0.3)

    delays = [redelivery_delay(count, policy) for count in range(20)]

    assert all(0 <= d <= 0.3 for d in delays)
    assert len(set(delays)) > 1
