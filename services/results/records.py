"""Frozen records the store hands out, and the errors callers can act on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.errors import CallerError, Reason


class JobNotFoundError(CallerError):
    """No such job for this tenant (another tenant's job looks exactly the same)."""

    default_reason = Reason.NOT_FOUND


class JobConflictError(CallerError):
    """The job exists but is in a state that forbids the request; ``code`` is stable."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, reason=Reason.INVALID_REQUEST)
        self.code = code


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class NewJob:
    """What the gateway reserves before it streams the upload."""

    tenant: str
    model: str
    priority: str
    submitted_by: str
    idempotency_key: str | None = None
    view: str | None = None
    external_ref: str | None = None
    nonce: str | None = None


@dataclass(frozen=True)
class ObjectFields:
    """What the encryptor reports once the sealed image is stored and published."""

    object_key: str
    sealed_size: int
    sealed_sha256: str
    body_sha256: str
    body_size: int
    view: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    status: str
    view: str | None
    model: str
    priority: str
    external_ref: str | None
    idempotency_key: str | None
    body_sha256: str | None
    body_size: int | None
    object_key: str | None
    sealed_size: int | None
    sealed_sha256: str | None
    nonce: str | None
    submitted_by: str | None
    created_at: datetime
    sealed_at: datetime | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    failure_message: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        """The job as callers see it; the gateway passes this through."""
        failure = None
        if self.failure_reason is not None:
            failure = {"reason": self.failure_reason, "message": self.failure_message}
        return {
            "job_id": self.id,
            "status": self.status,
            "view": self.view,
            "model": self.model,
            "priority": self.priority,
            "external_ref": self.external_ref,
            "nonce": self.nonce,
            "created_at": _iso(self.created_at),
            "queued_at": _iso(self.queued_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "failure": failure,
            "links": {
                "self": f"/v1/jobs/{self.id}",
                "result": f"/v1/jobs/{self.id}/result",
            },
        }


@dataclass(frozen=True)
class Created:
    job: Job
    created: bool


@dataclass(frozen=True)
class StoredResult:
    """A sealed prediction as stored: ciphertext, its wrapped key and the receipt."""

    job_id: str
    sealed_result: bytes = field(repr=False)
    sealed_result_sha256: str
    key_id: str
    wrapped_key: bytes = field(repr=False)
    encryption_context: Mapping[str, str]
    receipt: Mapping[str, Any] = field(repr=False)
    model_name: str
    model_version: str
    model_sha256: str
    stored_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StoredResult:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        values["sealed_result"] = bytes(values["sealed_result"])
        values["wrapped_key"] = bytes(values["wrapped_key"])
        return cls(**values)


@dataclass(frozen=True)
class JobQuery:
    tenant: str
    limit: int
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None
