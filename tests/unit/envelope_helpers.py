"""Shared helpers for the envelope tests: stream cutting and sealed-object surgery."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

from shared.envelope import (
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    BytesLike,
    EnvelopeHeader,
    seal_bytes,
)
from tests.fakes import FakeKeyService

KEY_ID = "alias/obscura-test"
CONTEXT = {"job_id": "job-0001", "purpose": "image", "tenant": "st-mary"}
OTHER_CONTEXT = {"job_id": "job-0002", "purpose": "image", "tenant": "st-mary"}
CHUNK = MIN_CHUNK_SIZE
RECORD = CHUNK + TAG_SIZE

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def cut(data: BytesLike, sizes: Sequence[int]) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces whose sizes cycle through ``sizes`` (0 allowed)."""
    if not any(sizes):
        sizes = [*sizes, 1]
    view = memoryview(data)
    offset = 0
    for size in itertools.cycle(sizes):
        if offset >= len(view):
            break
        yield bytes(view[offset : offset + size])
        offset += size


async def once(data: BytesLike) -> AsyncIterator[bytes]:
    yield bytes(data)


async def collect(stream: AsyncIterable[BytesLike]) -> bytes:
    return b"".join([bytes(piece) async for piece in stream])


async def seal_small(
    keys: FakeKeyService,
    data: bytes,
    context: dict[str, str] | None = None,
    chunk_size: int = CHUNK,
) -> bytes:
    sealed = await seal_bytes(
        data,
        keys,
        KEY_ID,
        CONTEXT if context is None else context,
        chunk_size=chunk_size,
    )
    return bytes(sealed)


def split(sealed: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    """Split a sealed object into its header bytes and its sealed chunks."""
    _, offset = EnvelopeHeader.read(sealed)
    record = chunk_size + TAG_SIZE
    body = sealed[offset:]
    chunks = [body[i : i + record] for i in range(0, len(body), record)]
    return sealed[:offset], chunks
