"""Request bodies of the internal API, validated at the trust boundary."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.messages import Sha256Hex, Tenant, View

Text255 = Annotated[str, Field(min_length=1, max_length=255)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AuthBody(_Body):
    token: str = Field(max_length=512)


class CreateJobBody(_Body):
    tenant: Tenant
    idempotency_key: Text255 | None = None
    view: View | None = None
    model: str = Field(min_length=1, max_length=128)
    priority: Literal["routine", "stat"] = "routine"
    external_ref: Text255 | None = None
    submitted_by: Text255
    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{2,128}$")] | None = None


class QueuedBody(_Body):
    object_key: str = Field(min_length=1, max_length=1024)
    sealed_size: int = Field(ge=0)
    sealed_sha256: Sha256Hex
    body_sha256: Sha256Hex
    body_size: int = Field(ge=0)
    view: View | None = None
