"""Seal one upload into the object store, then publish its job message.

Order matters: the object is complete before the message exists, and a message
the broker did not confirm means the object is deleted again, so the mesh never
holds a job without an object or an object without a job. An upload that fails
before completion is aborted, so no parts linger either.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from services.encryptor.publisher import JobPublisher
from services.encryptor.storage import ObjectStore, Part, StorageError
from shared.envelope import seal
from shared.errors import CallerError, Reason
from shared.keys import KeyService
from shared.logging import get_logger
from shared.messages import JobMessage

log = get_logger(__name__)

Priority = Literal["routine", "stat"]


class PayloadTooLargeError(CallerError):
    """The body was longer than the configured cap."""


@dataclass(frozen=True)
class SealRequest:
    tenant: str
    job_id: str
    view: str | None
    model: str
    priority: Priority
    nonce: str

    def object_key(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.job_id}/image.sealed"

    def context(self) -> dict[str, str]:
        return {"purpose": "image", "tenant": self.tenant, "job_id": self.job_id}


@dataclass(frozen=True)
class SealOutcome:
    object_key: str
    sealed_size: int
    sealed_sha256: str
    body_sha256: str
    body_size: int


class BodyMeter:
    """Counts and hashes the plaintext as it passes; refuses bytes past the cap."""

    def __init__(self, source: AsyncIterable[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._digest = hashlib.sha256()
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._source:
            self.size += len(piece)
            if self.size > self._limit:
                raise PayloadTooLargeError(
                    f"upload exceeds the limit of {self._limit} bytes; send a"
                    " smaller image.",
                    reason=Reason.INVALID_REQUEST,
                )
            self._digest.update(piece)
            yield piece

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@dataclass(frozen=True)
class SealerConfig:
    bucket: str
    key_id: str
    part_size: int
    chunk_size: int
    max_body_bytes: int


class Sealer:
    """Seal, store and announce one image per call."""

    def __init__(
        self,
        keys: KeyService,
        store: ObjectStore,
        publisher: JobPublisher,
        config: SealerConfig,
    ) -> None:
        self._keys = keys
        self._store = store
        self._publisher = publisher
        self._config = config

    async def seal(
        self, request: SealRequest, body: AsyncIterable[bytes]
    ) -> SealOutcome:
        key = request.object_key()
        meter = BodyMeter(body, self._config.max_body_bytes)
        upload_id = await self._store.create_multipart(key)
        try:
            size, digest = await self._upload(key, upload_id, request, meter)
        except BaseException:
            await self._cleanup("abort", self._store.abort(key, upload_id), key)
            raise
        outcome = SealOutcome(key, size, digest, meter.hexdigest(), meter.size)
        try:
            await self._publisher.publish(self._message(request, outcome))
        except BaseException:
            await self._cleanup("delete", self._store.delete(key), key)
            raise
        log.info("job_sealed", job_id=request.job_id, sealed_size=size)
        return outcome

    async def _upload(
        self,
        key: str,
        upload_id: str,
        request: SealRequest,
        meter: BodyMeter,
    ) -> tuple[int, str]:
        """Fill one part buffer from the sealed stream and send it once full.

        The buffer is reused for every part: a fresh one per part would leave
        freed part-sized blocks to the allocator, which kept concurrent uploads
        at well above one buffer each.
        """
        sealed = seal(
            meter,
            self._keys,
            self._config.key_id,
            request.context(),
            chunk_size=self._config.chunk_size,
        )
        part_size = self._config.part_size
        part, total = io.BytesIO(), 0
        digest = hashlib.sha256()
        parts: list[Part] = []
        async for piece in sealed:
            digest.update(piece)
            total += len(piece)
            view = memoryview(piece)
            while view:
                take = min(part_size - part.tell(), len(view))
                part.write(view[:take])
                view = view[take:]
                if part.tell() == part_size:
                    parts.append(await self._part(key, upload_id, parts, part))
                    part.seek(0)
        if part.tell() or not parts:
            parts.append(await self._part(key, upload_id, parts, part))
        await self._store.complete(key, upload_id, parts)
        return total, digest.hexdigest()

    async def _part(
        self, key: str, upload_id: str, parts: list[Part], body: io.BytesIO
    ) -> Part:
        # A file object, not bytes: the HTTP client streams it instead of
        # writing one large buffer in a single call. The buffer may still hold
        # a longer previous part past the current position.
        body.truncate()
        body.seek(0)
        return await self._store.upload_part(key, upload_id, len(parts) + 1, body)

    def _message(self, request: SealRequest, outcome: SealOutcome) -> JobMessage:
        return JobMessage(
            job_id=request.job_id,
            tenant=request.tenant,
            bucket=self._config.bucket,
            object_key=outcome.object_key,
            sealed_size=outcome.sealed_size,
            sealed_sha256=outcome.sealed_sha256,
            view=request.view,
            model=request.model,
            priority=request.priority,
            nonce=request.nonce,
            created_at=datetime.now(UTC),
        )

    async def _cleanup(
        self, action: str, operation: Coroutine[Any, Any, None], key: str
    ) -> None:
        """Undo a partial write; shielded so a cancelled request still cleans up.

        If the store cannot be reached either, the key is logged for the
        operator's sweep (S3 lifecycle rules expire incomplete uploads too).
        """
        try:
            await asyncio.shield(operation)
        except StorageError as exc:
            log.warning(
                "object_cleanup_failed",
                action=action,
                object_key=key,
                reason=exc.reason,
            )
