"""Streaming envelope encryption for every image, model and prediction.

Each object gets its own AES-256 data key from ``KeyService.generate_data_key``;
only the wrapped key (the ciphertext blob) is stored, in the header. Payloads are
sealed locally with AES-256-GCM in chunks (see ``shared.envelope_format`` for the
byte layout), so memory stays bounded by the chunk size, never the object size.

Unsealing is bound to the job: the caller states the encryption context it
expects, a header naming any other context is refused before KMS is asked for
anything, and the same context goes to KMS ``Decrypt`` so a doctored header fails
there too.

Streaming caveat: ``unseal`` yields each chunk's plaintext only after that chunk
authenticated, but truncation after a chunk is only known at the end of the
stream. A consumer must treat what it received as incomplete until the iterator
finishes without raising.

Key hygiene: the plaintext data key is copied into a bytearray that is zeroed as
soon as the AESGCM object exists, and no other reference is kept here. Python
cannot wipe the immutable ``bytes`` the key service returned; they are freed, not
zeroed, when this module drops its last reference, and OpenSSL keeps the expanded
key inside the cipher context until the cipher is collected.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator

from shared.envelope_format import (
    AEAD_NAME,
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    MAGIC,
    MAX_CHUNK_SIZE,
    MAX_HEADER_MAP_SIZE,
    MIN_CHUNK_SIZE,
    NONCE_SCHEME,
    PREAMBLE_SIZE,
    TAG_SIZE,
    BytesLike,
    ChunkOpener,
    ChunkSealer,
    EnvelopeHeader,
    check_chunk_size,
    check_context,
    parse_header_map,
    parse_preamble,
    raise_short_preamble,
)
from shared.errors import CallerError, IntegrityError, KeyContextMismatchError
from shared.keys import EncryptionContext, KeyService, Recipient

__all__ = [
    "AEAD_NAME",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_MAP_SIZE",
    "MIN_CHUNK_SIZE",
    "NONCE_SCHEME",
    "TAG_SIZE",
    "BytesLike",
    "ChunkOpener",
    "ChunkSealer",
    "EnvelopeHeader",
    "read_header",
    "seal",
    "seal_bytes",
    "unseal",
    "unseal_body",
    "unseal_bytes",
]

DEFAULT_MAX_CHUNK_SIZE = 16 * 1024 * 1024
"""Largest chunk a reader accepts unless told otherwise: one chunk is held in
memory at a time, and an enclave's memory is small."""


async def _rechunk(
    source: AsyncIterable[BytesLike], size: int
) -> AsyncIterator[BytesLike]:
    """Re-cut a stream into blocks of exactly ``size``, then one shorter last block.

    The last block is shorter than ``size`` and may be empty. Blocks are views into
    the source's pieces or into one reused buffer, valid only until the next step,
    so each must be consumed before the next is asked for. Each byte is copied at
    most once, and only when a block spans pieces.
    """
    buffer = bytearray(size)
    filled = 0
    async for piece in source:
        view = memoryview(piece).cast("B")
        start = 0
        if filled:
            start = min(size - filled, len(view))
            buffer[filled : filled + start] = view[:start]
            filled += start
            if filled < size:
                continue
            yield buffer
            filled = 0
        while len(view) - start >= size:
            yield view[start : start + size]
            start += size
        filled = len(view) - start
        buffer[:filled] = view[start:]
    yield memoryview(buffer)[:filled]


async def _prepend(
    first: BytesLike, rest: AsyncIterator[BytesLike]
) -> AsyncIterator[BytesLike]:
    if len(first):
        yield first
    async for piece in rest:
        yield piece


async def _read_exact(
    pieces: AsyncIterator[BytesLike], size: int, carry: memoryview
) -> tuple[bytearray, memoryview]:
    """Collect ``size`` bytes (or fewer at end of stream) and the leftover view."""
    collected = bytearray()
    while True:
        take = min(size - len(collected), len(carry))
        collected += carry[:take]
        carry = carry[take:]
        if len(collected) == size:
            return collected, carry
        try:
            carry = memoryview(await anext(pieces)).cast("B")
        except StopAsyncIteration:
            return collected, carry


async def read_header(
    source: AsyncIterable[BytesLike],
) -> tuple[EnvelopeHeader, AsyncIterator[BytesLike]]:
    """Read just the header, so a caller can look at key id and context first.

    Returns the header and the rest of the stream, to hand to ``unseal_body``.
    The header's length is checked against the cap before it is read.
    """
    pieces = aiter(source)
    preamble, carry = await _read_exact(pieces, PREAMBLE_SIZE, memoryview(b""))
    if len(preamble) < PREAMBLE_SIZE:
        raise_short_preamble(preamble)
    map_size = parse_preamble(preamble)
    raw_map, carry = await _read_exact(pieces, map_size, carry)
    if len(raw_map) < map_size:
        raise IntegrityError(
            f"sealed object ends {PREAMBLE_SIZE + len(raw_map)} bytes in, inside"
            f" its {PREAMBLE_SIZE + map_size}-byte header; the object is truncated."
        )
    return parse_header_map(memoryview(raw_map)), _prepend(carry, pieces)


async def seal(
    source: AsyncIterable[BytesLike],
    keys: KeyService,
    key_id: str,
    context: EncryptionContext,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    recipient: Recipient | None = None,
) -> AsyncGenerator[bytes, None]:
    """Seal a stream under a fresh data key: yields the header, then each chunk."""
    header, sealer = await _new_object(keys, key_id, context, chunk_size, recipient)
    yield header.encode()
    async for block in _rechunk(source, chunk_size):
        yield sealer.seal_chunk(block, final=len(block) < chunk_size)


async def unseal(
    source: AsyncIterable[BytesLike],
    keys: KeyService,
    expected_context: EncryptionContext,
    *,
    recipient: Recipient | None = None,
    max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
) -> AsyncGenerator[bytes, None]:
    """Unseal a stream, yielding each chunk's plaintext once it authenticated."""
    header, body = await read_header(source)
    async for plaintext in unseal_body(
        header,
        body,
        keys,
        expected_context,
        recipient=recipient,
        max_chunk_size=max_chunk_size,
    ):
        yield plaintext


async def unseal_body(
    header: EnvelopeHeader,
    body: AsyncIterable[BytesLike],
    keys: KeyService,
    expected_context: EncryptionContext,
    *,
    recipient: Recipient | None = None,
    max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
) -> AsyncGenerator[bytes, None]:
    """Unseal the chunks that follow a header obtained from ``read_header``."""
    opener = await _open_object(
        header, keys, expected_context, recipient, max_chunk_size
    )
    record = header.chunk_size + TAG_SIZE
    async for block in _rechunk(body, record):
        if len(block) == record:
            yield opener.open_chunk(block, final=False)
            continue
        _check_tail(len(block), opener.index)
        plaintext = opener.open_chunk(block, final=True)
        if plaintext:
            yield plaintext


async def seal_bytes(
    plaintext: BytesLike,
    keys: KeyService,
    key_id: str,
    context: EncryptionContext,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    recipient: Recipient | None = None,
) -> bytearray:
    """Seal a buffer already in memory, writing every chunk into one output."""
    header, sealer = await _new_object(keys, key_id, context, chunk_size, recipient)
    data = memoryview(plaintext).cast("B")
    full, final_size = divmod(len(data), chunk_size)
    encoded = header.encode()
    record = chunk_size + TAG_SIZE
    out = bytearray(len(encoded) + full * record + final_size + TAG_SIZE)
    view = memoryview(out)
    view[: len(encoded)] = encoded
    offset = len(encoded)
    for index in range(full + 1):
        final = index == full
        block = data[index * chunk_size : index * chunk_size + chunk_size]
        end = offset + len(block) + TAG_SIZE
        sealer.seal_chunk_into(block, final, view[offset:end])
        offset = end
    return out


async def unseal_bytes(
    sealed: BytesLike,
    keys: KeyService,
    expected_context: EncryptionContext,
    *,
    recipient: Recipient | None = None,
    max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
) -> bytearray:
    """Unseal a buffer already in memory; the result can be wiped by the caller."""
    header, offset = EnvelopeHeader.read(sealed)
    body = memoryview(sealed).cast("B")[offset:]
    record = header.chunk_size + TAG_SIZE
    full, tail = divmod(len(body), record)
    _check_tail(tail, full)
    opener = await _open_object(
        header, keys, expected_context, recipient, max_chunk_size
    )
    out = bytearray(full * header.chunk_size + tail - TAG_SIZE)
    view = memoryview(out)
    for index in range(full + 1):
        final = index == full
        block = body[index * record : index * record + record]
        start = index * header.chunk_size
        target = view[start : start + len(block) - TAG_SIZE]
        try:
            opener.open_chunk_into(block, final, target)
        except IntegrityError:
            view[:start] = bytes(start)
            raise
    return out


async def _new_object(
    keys: KeyService,
    key_id: str,
    context: EncryptionContext,
    chunk_size: int,
    recipient: Recipient | None,
) -> tuple[EnvelopeHeader, ChunkSealer]:
    """Check the request, make the data key, and drop its plaintext once used."""
    check_chunk_size(chunk_size)
    check_context(context)
    data_key = await keys.generate_data_key(key_id, context, recipient=recipient)
    header = EnvelopeHeader.new(
        data_key.key_id, data_key.ciphertext_blob, context, chunk_size
    )
    sealer = ChunkSealer(header, data_key.plaintext)
    del data_key
    return header, sealer


async def _open_object(
    header: EnvelopeHeader,
    keys: KeyService,
    expected_context: EncryptionContext,
    recipient: Recipient | None,
    max_chunk_size: int,
) -> ChunkOpener:
    """Refuse the object unless it is bound to this job; only then ask KMS."""
    _check_binding(header, expected_context)
    if header.chunk_size > max_chunk_size:
        raise CallerError(
            f"envelope chunk size {header.chunk_size} exceeds this reader's limit"
            f" of {max_chunk_size} bytes; raise max_chunk_size if that is expected."
        )
    key = await keys.decrypt(
        header.ciphertext_blob,
        expected_context,
        key_id=header.key_id,
        recipient=recipient,
    )
    opener = ChunkOpener(header, key)
    del key
    return opener


def _check_binding(header: EnvelopeHeader, expected: EncryptionContext) -> None:
    found = dict(header.encryption_context)
    wanted = dict(expected)
    if found == wanted:
        return
    differing = sorted(
        name
        for name in found.keys() | wanted.keys()
        if found.get(name) != wanted.get(name)
    )
    raise KeyContextMismatchError(
        f"envelope is bound to another encryption context (differs in {differing});"
        " unseal it with the context of the job it was sealed for."
    )


def _check_tail(size: int, index: int) -> None:
    """The last block of a body must be a whole final chunk: at least a tag."""
    if size >= TAG_SIZE:
        return
    if size == 0:
        raise IntegrityError(
            f"sealed object ends before chunk {index} and has no final chunk;"
            " the object is truncated."
        )
    raise IntegrityError(
        f"sealed object ends {size} bytes into chunk {index}, before its tag;"
        " the object is truncated."
    )
