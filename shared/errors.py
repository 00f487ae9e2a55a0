"""One error tree for every Obscura component.

    ObscuraError                      root; carries a reason code and `retryable`
    ├── CallerError                   bad input from whoever called us (permanent)
    │   └── UnsupportedImageError     image bytes we refuse to decode
    ├── IntegrityError                sealed data failed authentication (permanent)
    │   └── KeyContextMismatchError   envelope bound to another job, tenant or purpose
    ├── AttestationError              an attestation document failed verification
    ├── DependencyError               KMS, S3, the broker, the database, the NSM
    │   ├── RetryableDependencyError  throttling, timeouts, unreachable peers
    │   └── PermanentDependencyError  access denied, invalid ciphertext, not found
    └── InternalError                 a bug in Obscura itself

Library exceptions are translated into this tree at the adapter that calls the
library, most specific first, chained with ``from exc``. Code that decides whether
to retry looks at ``retryable`` (or catches ``RETRYABLE``), never at messages.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes: they appear in failed jobs, HTTP bodies and metrics."""

    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_IMAGE = "unsupported_image"
    CIPHERTEXT_TAMPERED = "ciphertext_tampered"
    KEY_CONTEXT_MISMATCH = "key_context_mismatch"
    ATTESTATION_REJECTED = "attestation_rejected"
    MODEL_UNAVAILABLE = "model_unavailable"
    ACCESS_DENIED = "access_denied"
    INVALID_CIPHERTEXT = "invalid_ciphertext"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ObscuraError(Exception):
    """Root of the tree. ``reason`` is a stable code, the message is for people."""

    default_reason: Reason = Reason.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason or self.default_reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason.value!r}, {str(self)!r})"


class CallerError(ObscuraError):
    default_reason = Reason.INVALID_REQUEST


class UnsupportedImageError(CallerError):
    default_reason = Reason.UNSUPPORTED_IMAGE


class IntegrityError(ObscuraError):
    default_reason = Reason.CIPHERTEXT_TAMPERED


class KeyContextMismatchError(IntegrityError):
    default_reason = Reason.KEY_CONTEXT_MISMATCH


class AttestationError(ObscuraError):
    default_reason = Reason.ATTESTATION_REJECTED


class DependencyError(ObscuraError):
    default_reason = Reason.UNAVAILABLE


class RetryableDependencyError(DependencyError):
    default_reason = Reason.UNAVAILABLE
    retryable = True


class PermanentDependencyError(DependencyError):
    default_reason = Reason.ACCESS_DENIED


class InternalError(ObscuraError):
    default_reason = Reason.INTERNAL


RETRYABLE: tuple[type[ObscuraError], ...] = (RetryableDependencyError,)
