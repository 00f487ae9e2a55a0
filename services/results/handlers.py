"""What a message means for job state, apart from how it arrived.

Each handler commits its change before returning, so the consumer acks only
what is durable. Every handler is idempotent by job id: a redelivered message
finds the job already moved and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from enum import StrEnum

from services.results.decrypt import result_context
from services.results.records import StoredResult
from services.results.store import JobStore, now, valid_job_id
from shared.envelope_format import EnvelopeHeader
from shared.errors import CallerError, IntegrityError, ObscuraError
from shared.logging import get_logger
from shared.messages import ResultMessage, parse_job, parse_result

log = get_logger(__name__)

RETRIES_EXHAUSTED = "retries_exhausted"
INVALID_MESSAGE = "invalid_message"
INVALID_RESULT = "invalid_result"
INTERNAL_FAILURE = "internal"


class Disposition(StrEnum):
    APPLIED = "applied"
    NO_CHANGE = "no_change"
    MALFORMED = "malformed"


class MessageHandler:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def on_result(self, body: bytes) -> Disposition:
        """Apply a ``ResultMessage``; malformed ones are logged and dropped."""
        try:
            message = parse_result(body)
        except CallerError as exc:
            log.warning(
                "result message dropped", reason=INVALID_MESSAGE, error=str(exc)
            )
            return Disposition.MALFORMED
        try:
            stored = _stored_result(message) if message.status == "succeeded" else None
        except (CallerError, IntegrityError) as exc:
            return await self._invalid_success(message, exc)
        model = message.model.name if message.model else "unknown"
        if await self.store.ensure(message.tenant, message.job_id, model):
            log.info("job first heard of from a result", job_id=message.job_id)
        moved = await self._apply(message, stored)
        disposition = Disposition.APPLIED if moved else Disposition.NO_CHANGE
        log.info(
            "result message",
            job_id=message.job_id,
            status=message.status,
            disposition=disposition.value,
        )
        return disposition

    async def _apply(self, message: ResultMessage, stored: StoredResult | None) -> bool:
        if stored is not None:
            return await self.store.mark_succeeded(message.tenant, stored)
        if message.status == "running":
            return await self.store.mark_running(
                message.tenant, message.job_id, message.at
            )
        return await self.store.mark_failed(
            message.tenant,
            message.job_id,
            message.reason or "unknown",
            message.message or "The enclave reported a failure without a message.",
            message.at,
        )

    async def _invalid_success(
        self, message: ResultMessage, error: ObscuraError
    ) -> Disposition:
        """A ``succeeded`` result that fails its checks fails the job, so it
        cannot stay ``running`` with nothing left to move it."""
        log.warning(
            "succeeded result refused",
            job_id=message.job_id,
            reason=INVALID_RESULT,
            error=str(error),
        )
        if not valid_job_id(message.job_id):
            return Disposition.MALFORMED
        moved = await self.store.mark_failed(
            message.tenant,
            message.job_id,
            INVALID_RESULT,
            "The enclave's result failed the results service's checks; resubmit"
            " the image.",
            now(),
        )
        return Disposition.APPLIED if moved else Disposition.MALFORMED

    async def on_unhandled(self, body: bytes) -> Disposition:
        """A message whose handler raised twice: fail the job it names, if any,
        rather than drop it and leave the job in flight for ever."""
        named = _named_job(body)
        if named is None:
            return Disposition.MALFORMED
        tenant, job_id = named
        moved = await self.store.mark_failed(
            tenant,
            job_id,
            INTERNAL_FAILURE,
            "The results service could not apply the job's result; resubmit the image.",
            now(),
        )
        return Disposition.APPLIED if moved else Disposition.NO_CHANGE

    async def on_dead_letter(self, body: bytes) -> Disposition:
        """A job message nobody could finish: its job fails unless already done."""
        try:
            job = parse_job(body)
        except CallerError as exc:
            return await self._unparsable_job(body, exc)
        moved = await self.store.mark_failed(
            job.tenant,
            job.job_id,
            RETRIES_EXHAUSTED,
            "No enclave proxy finished the job within its delivery limit;"
            " resubmit the image.",
            now(),
        )
        disposition = Disposition.APPLIED if moved else Disposition.NO_CHANGE
        log.info("dead-lettered job", job_id=job.job_id, disposition=disposition.value)
        return disposition

    async def _unparsable_job(self, body: bytes, error: ObscuraError) -> Disposition:
        """Fail the job if the body still names one; otherwise only log it."""
        log.warning(
            "dead-lettered job message invalid",
            reason=INVALID_MESSAGE,
            error=str(error),
        )
        named = _named_job(body)
        if named is None:
            return Disposition.MALFORMED
        tenant, job_id = named
        moved = await self.store.mark_failed(
            tenant,
            job_id,
            INVALID_MESSAGE,
            "The job message could not be read by the enclave proxies; resubmit"
            " the image.",
            now(),
        )
        return Disposition.APPLIED if moved else Disposition.MALFORMED


def _named_job(body: bytes) -> tuple[str, str] | None:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    tenant, job_id = data.get("tenant"), data.get("job_id")
    if isinstance(tenant, str) and isinstance(job_id, str) and valid_job_id(job_id):
        return tenant, job_id
    return None


def _stored_result(message: ResultMessage) -> StoredResult:
    """Check a ``succeeded`` message and turn it into the row to store."""
    if not valid_job_id(message.job_id):
        raise CallerError(f"job id {message.job_id!r} is not a UUID.")
    if not (message.sealed_result and message.sealed_result_sha256):
        raise CallerError("a succeeded result needs sealed_result and its sha256.")
    if message.receipt is None or message.model is None:
        raise CallerError("a succeeded result needs a receipt and a model.")
    try:
        sealed = base64.b64decode(message.sealed_result, validate=True)
    except binascii.Error as exc:
        raise CallerError("sealed_result is not valid base64.") from exc
    digest = hashlib.sha256(sealed).hexdigest()
    if digest != message.sealed_result_sha256:
        raise CallerError(
            f"sealed_result hashes to {digest}, not {message.sealed_result_sha256}."
        )
    header, _ = EnvelopeHeader.read(sealed)
    expected = result_context(message.tenant, message.job_id)
    if dict(header.encryption_context) != expected:
        raise CallerError(
            "the sealed result is not bound to this job's purpose=result context."
        )
    return StoredResult(
        job_id=message.job_id,
        sealed_result=sealed,
        sealed_result_sha256=digest,
        key_id=header.key_id,
        wrapped_key=header.ciphertext_blob,
        encryption_context=dict(header.encryption_context),
        receipt=message.receipt,
        model_name=message.model.name,
        model_version=message.model.version,
        model_sha256=message.model.sha256,
        stored_at=message.at,
    )
