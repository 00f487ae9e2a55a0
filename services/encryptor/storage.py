"""The object store seam of the encryptor and its aiobotocore S3 adapter.

Only multipart calls are used, so an object of any size is written with one part
buffer in memory. botocore's own retries are off: a failed part aborts the whole
upload and the gateway's caller retries the job, which is cheaper to reason about
than resuming half an upload.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from shared.aws import Credentials, open_client
from shared.errors import PermanentDependencyError, Reason, RetryableDependencyError


class StorageUnavailableError(RetryableDependencyError):
    """The object store did not answer, or answered with a server error."""


class StorageRefusedError(PermanentDependencyError):
    """The object store refused the request: access, bucket or request errors."""


StorageError = (StorageUnavailableError, StorageRefusedError)


@dataclass(frozen=True)
class Part:
    number: int
    etag: str


class ObjectStore(Protocol):
    async def create_multipart(self, key: str) -> str:
        """Start an upload and return its upload id."""
        ...

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: io.BytesIO
    ) -> Part: ...

    async def complete(self, key: str, upload_id: str, parts: list[Part]) -> None: ...

    async def abort(self, key: str, upload_id: str) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def check(self) -> None:
        """Raise unless the bucket is reachable."""
        ...


@dataclass(frozen=True)
class S3Endpoint:
    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0


def _translate(exc: ClientError | BotoCoreError, operation: str) -> Exception:
    if isinstance(exc, BotoCoreError):
        return StorageUnavailableError(
            f"S3 {operation} did not complete ({type(exc).__name__}); check that"
            " the object store is reachable.",
            reason=Reason.UNAVAILABLE,
        )
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    message = f"S3 {operation} failed with {code} (HTTP {status})."
    if status >= 500 or status in (0, 429) or code == "SlowDown":
        return StorageUnavailableError(message, reason=Reason.UNAVAILABLE)
    reason = Reason.NOT_FOUND if status == 404 else Reason.ACCESS_DENIED
    return StorageRefusedError(message, reason=reason)


class S3ObjectStore:
    """``ObjectStore`` over one aiobotocore S3 client and one bucket."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, endpoint: S3Endpoint, credentials: Credentials | None = None
    ) -> AsyncIterator[S3ObjectStore]:
        async with open_client(
            "s3",
            region=endpoint.region,
            endpoint_url=endpoint.endpoint_url,
            credentials=credentials,
            connect_timeout_s=endpoint.connect_timeout_s,
            read_timeout_s=endpoint.read_timeout_s,
        ) as client:
            yield cls(client, endpoint.bucket)

    async def _call(self, operation: str, **request: Any) -> dict[str, Any]:
        method = getattr(self._client, operation)
        try:
            answer: dict[str, Any] = await method(Bucket=self.bucket, **request)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, operation) from exc
        return answer

    async def create_multipart(self, key: str) -> str:
        answer = await self._call("create_multipart_upload", Key=key)
        return str(answer["UploadId"])

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: io.BytesIO
    ) -> Part:
        answer = await self._call(
            "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return Part(number, str(answer["ETag"]))

    async def complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        listing = [{"ETag": p.etag, "PartNumber": p.number} for p in parts]
        await self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": listing},
        )

    async def abort(self, key: str, upload_id: str) -> None:
        await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=key)

    async def check(self) -> None:
        await self._call("head_bucket")
