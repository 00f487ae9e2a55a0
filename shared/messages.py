"""Message bodies on RabbitMQ: the contract between encryptor, proxy and results.

Every body is JSON with a ``version``; consumers validate against these models and
dead-letter anything else with a logged reason. Only ciphertext, hashes and ids
travel here: never pixels, keys, credentials or patient fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import CallerError

JOBS_EXCHANGE = "obscura.jobs"
JOBS_QUEUE = "obscura.jobs"
RESULTS_EXCHANGE = "obscura.results"
RESULTS_QUEUE = "obscura.results"
DEAD_LETTER_EXCHANGE = "obscura.dlx"
DEAD_LETTER_QUEUE = "obscura.jobs.dead"

View = Literal["L-CC", "R-CC", "L-MLO", "R-MLO"]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
JobId = Annotated[str, Field(pattern=r"^[0-9a-f-]{36}$")]
Tenant = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobMessage(_Message):
    """Published by the encryptor once the sealed image is in the object store."""

    version: Literal[1] = 1
    job_id: JobId
    tenant: Tenant
    bucket: str = Field(min_length=3, max_length=63)
    object_key: str = Field(min_length=1, max_length=1024)
    sealed_size: int = Field(ge=0)
    sealed_sha256: Sha256Hex
    view: View | None
    model: str = Field(min_length=1, max_length=128)
    priority: Literal["routine", "stat"] = "routine"
    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{2,128}$")]
    created_at: datetime

    def image_context(self) -> dict[str, str]:
        """The encryption context the image's data key is bound to."""
        return {"purpose": "image", "tenant": self.tenant, "job_id": self.job_id}

    def result_context(self) -> dict[str, str]:
        return {"purpose": "result", "tenant": self.tenant, "job_id": self.job_id}


class ModelIdentity(_Message):
    name: str
    version: str
    sha256: Sha256Hex


class ResultMessage(_Message):
    """Published by the enclave proxy: a sealed prediction or a permanent failure."""

    version: Literal[1] = 1
    job_id: JobId
    tenant: Tenant
    status: Literal["succeeded", "failed", "running"]
    at: datetime
    sealed_result: str | None = None  # base64 of the sealed prediction envelope
    sealed_result_sha256: Sha256Hex | None = None
    receipt: dict[str, Any] | None = None
    model: ModelIdentity | None = None
    reason: str | None = None
    message: str | None = Field(default=None, max_length=1000)
    timings_s: dict[str, float] | None = None


def parse_job(body: bytes) -> JobMessage:
    try:
        return JobMessage.model_validate_json(body)
    except ValidationError as exc:
        raise CallerError(
            f"The job message is not a valid version-1 job: {exc}"
        ) from exc


def parse_result(body: bytes) -> ResultMessage:
    try:
        return ResultMessage.model_validate_json(body)
    except ValidationError as exc:
        raise CallerError(f"The result message is not valid: {exc}") from exc
