"""Streaming reads of sealed images from S3, in pieces, never whole.

``ObjectStore`` is the seam the job loop sees; ``S3ObjectStore`` implements it on
aiobotocore with botocore's retries off, because the job loop decides about
retries itself (by requeueing the delivery). S3 and connection errors are
translated into the shared error tree here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from shared.aws import Credentials, open_client
from shared.errors import (
    DependencyError,
    PermanentDependencyError,
    Reason,
    RetryableDependencyError,
)

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "RequestLimitExceeded"})


@dataclass(frozen=True)
class S3Endpoint:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0


@dataclass(frozen=True)
class SealedObject:
    """An object being read: its announced size and its bytes in pieces."""

    size: int
    pieces: AsyncIterator[bytes]


class ObjectStore(Protocol):
    def open(
        self, bucket: str, key: str
    ) -> contextlib.AbstractAsyncContextManager[SealedObject]:
        """The object's size and a piece iterator, released on exit."""
        ...


def translate_s3_error(exc: ClientError, what: str) -> DependencyError:
    """Map an S3 error code onto the tree; unknown 5xx are retryable."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    message = f"S3 GetObject of {what} failed with {code}."
    if code in _NOT_FOUND:
        return PermanentDependencyError(
            f"sealed object {what} does not exist; the encryptor must upload it "
            "before publishing the job.",
            reason=Reason.NOT_FOUND,
        )
    if code in _DENIED:
        return PermanentDependencyError(message, reason=Reason.ACCESS_DENIED)
    if code in _THROTTLED or status == 503:
        return RetryableDependencyError(message, reason=Reason.THROTTLED)
    if status >= 500 or status == 0:
        return RetryableDependencyError(message, reason=Reason.UNAVAILABLE)
    return PermanentDependencyError(message, reason=Reason.INVALID_REQUEST)


def _transport_error(exc: Exception, what: str) -> RetryableDependencyError:
    return RetryableDependencyError(
        f"reading {what} from S3 failed with {type(exc).__name__}; the delivery "
        "will be retried.",
        reason=Reason.UNAVAILABLE,
    )


class S3ObjectStore:
    """``ObjectStore`` over one aiobotocore S3 client."""

    def __init__(self, client: Any, *, piece_bytes: int = 1024 * 1024) -> None:
        self._client = client
        self._piece_bytes = piece_bytes

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        endpoint: S3Endpoint,
        credentials: Credentials | None = None,
        *,
        piece_bytes: int = 1024 * 1024,
    ) -> AsyncIterator[S3ObjectStore]:
        """Open a client; without credentials botocore's default chain applies."""
        async with open_client(
            "s3",
            region=endpoint.region,
            endpoint_url=endpoint.endpoint_url,
            credentials=credentials,
            connect_timeout_s=endpoint.connect_timeout_s,
            read_timeout_s=endpoint.read_timeout_s,
        ) as client:
            yield cls(client, piece_bytes=piece_bytes)

    @contextlib.asynccontextmanager
    async def open(self, bucket: str, key: str) -> AsyncIterator[SealedObject]:
        what = f"s3://{bucket}/{key}"
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise translate_s3_error(exc, what) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise _transport_error(exc, what) from exc
        body = response["Body"]
        try:
            size = int(response["ContentLength"])
            yield SealedObject(size, self._pieces(body, what))
        finally:
            body.close()

    async def _pieces(self, body: Any, what: str) -> AsyncIterator[bytes]:
        while True:
            try:
                piece: bytes = await body.read(self._piece_bytes)
            except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
                raise _transport_error(exc, what) from exc
            except TimeoutError as exc:
                raise _transport_error(exc, what) from exc
            if not piece:
                return
            yield piece
