"""What the enclave proxy and the enclave worker say to each other over the link.

Each connection opens with the link handshake, then carries exactly one exchange:

- ``CONTROL status`` -> ``CONTROL_REPLY`` with the worker's readiness, slots and
  model; the proxy polls it for its own readiness and its prefetch.
- ``CONTROL credentials`` -> ``CONTROL_REPLY ok``: short-lived AWS credentials
  for the worker's KMS calls. They travel only here, never inside job messages.
- ``JOB`` + body + ``END`` -> ``RESULT`` + sealed prediction + ``END``, or
  ``ERROR`` with a reason code and whether a retry can help.

One connection per exchange keeps jobs independent: a job that fails or is
cancelled takes nothing else down with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.errors import CallerError
from shared.link import (
    Control,
    FrameType,
    JobHeader,
    Link,
    LinkLimits,
    ProtocolError,
    ResultHeader,
    Role,
    Transport,
    client_hello,
)
from shared.link.frames import ErrorInfo

OP_STATUS = "status"
OP_CREDENTIALS = "credentials"
MAX_RESULT_BYTES = 1 << 20


@dataclass(frozen=True)
class WorkerStatus:
    ready: bool
    reason: str | None = None
    message: str | None = None
    slots: int = 0
    busy: int = 0
    model: Mapping[str, str] | None = None
    pcr0: str | None = None
    has_credentials: bool = False

    def to_fields(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "reason": self.reason,
            "message": self.message,
            "slots": self.slots,
            "busy": self.busy,
            "model": dict(self.model) if self.model else None,
            "pcr0": self.pcr0,
            "has_credentials": self.has_credentials,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> WorkerStatus:
        try:
            return cls(
                ready=bool(fields["ready"]),
                reason=fields.get("reason"),
                message=fields.get("message"),
                slots=int(fields["slots"]),
                busy=int(fields["busy"]),
                model=fields.get("model"),
                pcr0=fields.get("pcr0"),
                has_credentials=bool(fields.get("has_credentials", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"worker status is malformed: {exc!r}.") from exc


@dataclass(frozen=True)
class HandedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: datetime | None = None

    def to_fields(self) -> dict[str, Any]:
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "expiration": self.expiration.isoformat() if self.expiration else None,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> HandedCredentials:
        try:
            expiration = fields.get("expiration")
            return cls(
                access_key_id=str(fields["access_key_id"]),
                secret_access_key=str(fields["secret_access_key"]),
                session_token=fields.get("session_token"),
                expiration=datetime.fromisoformat(expiration) if expiration else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("credentials hand-off is malformed.") from exc

    def expires_within(self, seconds: float) -> bool:
        if self.expiration is None:
            return False
        return (self.expiration - datetime.now(UTC)).total_seconds() < seconds


@dataclass(frozen=True)
class JobRequest:
    """What the worker needs to know about a job, beyond its sealed body."""

    job_id: str
    tenant: str
    nonce: bytes
    body_size: int
    model: str
    view: str | None = None

    def header(self) -> JobHeader:
        attributes = {"tenant": self.tenant, "model": self.model}
        if self.view:
            attributes["view"] = self.view
        return JobHeader(
            job_id=self.job_id,
            body_size=self.body_size,
            nonce=self.nonce,
            attributes=attributes,
        )

    @classmethod
    def from_header(cls, header: JobHeader) -> JobRequest:
        try:
            return cls(
                job_id=header.job_id,
                tenant=header.attributes["tenant"],
                nonce=header.nonce,
                body_size=header.body_size,
                model=header.attributes["model"],
                view=header.attributes.get("view"),
            )
        except KeyError as exc:
            raise CallerError(f"the JOB header lacks the {exc} attribute.") from exc


@dataclass(frozen=True)
class JobOutcome:
    sealed_result: bytes = field(repr=False)
    receipt: bytes
    attributes: Mapping[str, str]


class WorkerClient:
    """The proxy's side: one connection per exchange with its worker."""

    def __init__(self, transport: Transport, limits: LinkLimits | None = None) -> None:
        self._transport = transport
        self._limits = limits or LinkLimits()

    async def _open(self) -> Link:
        reader, writer = await self._transport.connect()
        return await client_hello(reader, writer, role=Role.PROXY, limits=self._limits)

    async def _control(self, op: str, fields: Mapping[str, Any]) -> Control:
        async with await self._open() as link:
            await link.write_frame(Control(op, fields).to_frame())
            frame = await link.read_frame()
            if frame.type is FrameType.ERROR:
                raise ErrorInfo.from_frame(frame).to_exception()
            if frame.type is not FrameType.CONTROL_REPLY:
                raise ProtocolError(f"expected CONTROL_REPLY, got {frame!r}.")
            return Control.from_frame(frame)

    async def status(self) -> WorkerStatus:
        reply = await self._control(OP_STATUS, {})
        return WorkerStatus.from_fields(reply.fields)

    async def hand_credentials(self, credentials: HandedCredentials) -> None:
        await self._control(OP_CREDENTIALS, credentials.to_fields())

    async def run_job(
        self,
        request: JobRequest,
        body: AsyncIterable[bytes],
        *,
        timeout_s: float,
    ) -> JobOutcome:
        """Stream one sealed image in; the sealed prediction or a PeerError out."""
        async with await self._open() as link:
            await link.send_job(request.header(), body)
            frame = await link.read_frame(timeout=timeout_s)
            if frame.type is FrameType.ERROR:
                raise ErrorInfo.from_frame(frame).to_exception()
            result = ResultHeader.from_frame(frame)
            if result.job_id != request.job_id or result.body_size > MAX_RESULT_BYTES:
                raise ProtocolError(
                    f"the worker answered job {result.job_id!r} with"
                    f" {result.body_size} bytes for job {request.job_id!r}."
                )
            sealed = await link.read_body(expected_size=result.body_size)
            return JobOutcome(
                sealed_result=sealed,
                receipt=result.receipt,
                attributes=result.attributes,
            )
