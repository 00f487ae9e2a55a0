"""The encryptor's part buffer: one per upload, reused, cut to each part's length."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator

import pytest

from services.encryptor.sealing import Sealer, SealerConfig, SealRequest
from services.encryptor.storage import Part
from shared.envelope import unseal_bytes
from tests.fakes import FakeKeyService
from tests.loopdebug import SlowCallbackWatch
from tests.loopdebug import loop_watch as loop_watch  # the fixture
from tests.unit.gateway_helpers import MemoryPublisher, MemoryStore

pytestmark = pytest.mark.timeout(20)

PART = 5 * 1024 * 1024
REQUEST = SealRequest(
    "st-olaf", "5b0c2a94-8a3e-4c1e-9d7e-2f1c0b6a7e11", "L-CC", "m", "routine", "ab"
)


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.buffers: list[io.BytesIO] = []

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: io.BytesIO
    ) -> Part:
        self.buffers.append(body)  # kept alive, so identities stay distinct
        return await super().upload_part(key, upload_id, number, body)


async def _pieces(data: bytes, step: int = 300_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


async def test_sealer_reuses_one_part_buffer_and_cuts_the_last_part() -> None:
    keys, store, publisher = FakeKeyService(), RecordingStore(), MemoryPublisher()
    config = SealerConfig("bucket-1", keys.key_ids[0], PART, 65536, 64 * 1024 * 1024)
    image = os.urandom(2 * PART + 123_457)

    outcome = await Sealer(keys, store, publisher, config).seal(REQUEST, _pieces(image))

    sealed = store.objects[outcome.object_key]
    assert len(store.buffers) == 3
    assert all(body is store.buffers[0] for body in store.buffers)
    assert len(sealed) == outcome.sealed_size > 2 * PART
    plaintext = await unseal_bytes(sealed, keys, REQUEST.context())
    assert bytes(plaintext) == image


async def test_sealer_part_sizes_are_full_then_the_rest() -> None:
    keys, store, publisher = FakeKeyService(), MemoryStore(), MemoryPublisher()
    config = SealerConfig("bucket-1", keys.key_ids[0], PART, 65536, 64 * 1024 * 1024)
    sizes: list[int] = []
    real = store.upload_part

    async def recording(
        key: str, upload_id: str, number: int, body: io.BytesIO
    ) -> Part:
        sizes.append(len(body.getvalue()))
        return await real(key, upload_id, number, body)

    store.upload_part = recording  # type: ignore[method-assign]
    outcome = await Sealer(keys, store, publisher, config).seal(
        REQUEST, _pieces(os.urandom(2 * PART + 10))
    )
    assert sizes[:2] == [PART, PART]
    assert len(sizes) == 3 and 0 < sizes[2] < PART
    assert sum(sizes) == outcome.sealed_size


async def _socket_like(data: bytes, step: int) -> AsyncIterator[bytes]:
    """Pieces as a request body delivers them: the loop runs between pieces."""
    for start in range(0, len(data), step):
        await asyncio.sleep(0)
        yield data[start : start + step]


async def test_sealer_streams_a_large_upload_without_blocking_the_loop(
    loop_watch: SlowCallbackWatch,
) -> None:
    keys, store, publisher = FakeKeyService(), MemoryStore(), MemoryPublisher()
    config = SealerConfig("bucket-1", keys.key_ids[0], PART, 1 << 20, 256 << 20)
    image = os.urandom(1 << 20) * 48

    outcome = await Sealer(keys, store, publisher, config).seal(
        REQUEST, _socket_like(image, 64 * 1024)
    )

    assert outcome.body_size == len(image)
    assert loop_watch.lines == []
