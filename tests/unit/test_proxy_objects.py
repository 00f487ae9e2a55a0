from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from services.enclave_proxy.objects import S3ObjectStore
from shared.errors import PermanentDependencyError, RetryableDependencyError


class FakeBody:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.reads: list[int] = []
        self.closed = False

    async def read(self, amount: int) -> bytes:
        self.reads.append(amount)
        piece, self._data = self._data[:amount], self._data[amount:]
        return piece

    def close(self) -> None:
        self.closed = True


class FakeS3:
    def __init__(self, data: bytes | None = None, code: str = "NoSuchKey") -> None:
        self.body = FakeBody(data or b"")
        self._data = data
        self._code = code

    async def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if self._data is None:
            status = 503 if self._code == "SlowDown" else 404
            raise ClientError(
                {
                    "Error": {"Code": self._code, "Message": "x"},
                    "ResponseMetadata": {"HTTPStatusCode": status},
                },
                "GetObject",
            )
        return {"Body": self.body, "ContentLength": len(self._data)}


async def test_s3_object_store_streams_in_pieces_of_the_set_size() -> None:
    data = bytes(range(256)) * 1000
    client = FakeS3(data)
    store = S3ObjectStore(client, piece_bytes=64 * 1024)

    async with store.open("bucket", "key") as sealed:
        pieces = [piece async for piece in sealed.pieces]

    assert sealed.size == len(data)
    assert b"".join(pieces) == data
    assert max(map(len, pieces)) == 64 * 1024
    assert len(pieces) == 4
    assert set(client.body.reads) == {64 * 1024}
    assert client.body.closed


async def test_s3_object_store_missing_key_is_permanent_not_found() -> None:
    store = S3ObjectStore(FakeS3(None, "NoSuchKey"))

    with pytest.raises(PermanentDependencyError) as caught:
        async with store.open("bucket", "key"):
            pass

    assert caught.value.reason == "not_found"


async def test_s3_object_store_throttling_is_retryable() -> None:
    store = S3ObjectStore(FakeS3(None, "SlowDown"))

    with pytest.raises(RetryableDependencyError):
        async with store.open("bucket", "key"):
            pass
