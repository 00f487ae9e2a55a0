"""Sealing and unsealing: round trips, tampering, truncation and job binding."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.envelope import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    TAG_SIZE,
    EnvelopeHeader,
    read_header,
    seal,
    seal_bytes,
    unseal,
    unseal_body,
    unseal_bytes,
)
from shared.errors import (
    CallerError,
    IntegrityError,
    KeyContextMismatchError,
    PermanentDependencyError,
    Reason,
)
from shared.keys import Recipient
from tests.fakes import FakeKeyService
from tests.unit.envelope_helpers import (
    CHUNK,
    CONTEXT,
    KEY_ID,
    OTHER_CONTEXT,
    RECORD,
    collect,
    cut,
    once,
    random_bytes,
    run,
    seal_small,
    split,
)

EDGE_SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7]


def _tampered(exc_info: pytest.ExceptionInfo[BaseException], chunk: int) -> None:
    assert type(exc_info.value) is IntegrityError
    assert exc_info.value.reason is Reason.CIPHERTEXT_TAMPERED
    assert re.search(rf"\bchunk {chunk}\b", str(exc_info.value)), str(exc_info.value)


@pytest.mark.parametrize("size", EDGE_SIZES)
async def test_envelope_round_trip_streaming_at_edge_sizes(size: int) -> None:
    keys = FakeKeyService()
    data = random_bytes(size, seed=size)

    sealed = await collect(
        seal(cut(data, [1000]), keys, KEY_ID, CONTEXT, chunk_size=CHUNK)
    )
    plaintext = await collect(unseal(cut(sealed, [777]), keys, CONTEXT))

    assert plaintext == data
    full, final = divmod(size, CHUNK)
    header_size = EnvelopeHeader.read(sealed)[1]
    assert len(sealed) == header_size + full * RECORD + final + TAG_SIZE


@pytest.mark.parametrize("size", EDGE_SIZES)
async def test_envelope_round_trip_bytes_and_streaming_interoperate(size: int) -> None:
    keys = FakeKeyService()
    data = random_bytes(size, seed=size + 1)

    from_bytes = await seal_bytes(data, keys, KEY_ID, CONTEXT, chunk_size=CHUNK)
    from_stream = await collect(
        seal(once(data), keys, KEY_ID, CONTEXT, chunk_size=CHUNK)
    )

    assert await collect(unseal(once(from_bytes), keys, CONTEXT)) == data
    assert await unseal_bytes(from_stream, keys, CONTEXT) == data


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 4 * CHUNK + 100),
    seed=st.integers(0, 2**16),
    seal_pieces=st.lists(st.integers(0, 3 * CHUNK), min_size=1, max_size=6),
    open_pieces=st.lists(st.integers(0, 3 * CHUNK), min_size=1, max_size=6),
)
def test_envelope_round_trip_any_piece_sizes(
    size: int, seed: int, seal_pieces: list[int], open_pieces: list[int]
) -> None:
    keys = FakeKeyService()
    data = random_bytes(size, seed)

    async def round_trip() -> bytes:
        source = cut(data, seal_pieces)
        sealed = await collect(seal(source, keys, KEY_ID, CONTEXT, chunk_size=CHUNK))
        return await collect(unseal(cut(sealed, open_pieces), keys, CONTEXT))

    assert run(round_trip()) == data


@pytest.mark.parametrize("chunk_size", [CHUNK, DEFAULT_CHUNK_SIZE])
async def test_envelope_round_trip_several_mib(chunk_size: int) -> None:
    keys = FakeKeyService()
    data = random_bytes(3 * 1024 * 1024 + 123, seed=7)
    pieces = [0, 65_536, 1, 100_003, 4096, 1_500_000]

    stream = seal(cut(data, pieces), keys, KEY_ID, CONTEXT, chunk_size=chunk_size)
    sealed = await collect(stream)

    assert await collect(unseal(cut(sealed, pieces[::-1]), keys, CONTEXT)) == data
    assert await unseal_bytes(sealed, keys, CONTEXT) == data


async def test_envelope_seal_pulls_input_lazily_and_yields_bounded_chunks() -> None:
    keys = FakeKeyService()
    pulled = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b"\x5a" * 1000

    outputs = seal(counted(), keys, KEY_ID, CONTEXT, chunk_size=CHUNK)
    await anext(outputs)
    first = await anext(outputs)

    assert len(first) == RECORD
    assert pulled <= CHUNK // 1000 + 1
    rest = [chunk async for chunk in outputs]
    assert all(len(chunk) <= RECORD for chunk in rest)
    assert pulled == 100


async def test_envelope_unseal_yields_first_chunk_before_reading_the_rest() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(10 * CHUNK, seed=3))
    pulled = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal pulled
        async for piece in cut(sealed, [512]):
            pulled += 1
            yield piece

    plaintexts = unseal(counted(), keys, CONTEXT)
    first = await anext(plaintexts)
    await plaintexts.aclose()

    header_size = EnvelopeHeader.read(sealed)[1]
    assert len(first) == CHUNK
    assert pulled * 512 <= header_size + RECORD + 512


async def test_envelope_every_single_byte_flip_is_rejected() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(CHUNK + 300, seed=11))
    header_size = EnvelopeHeader.read(sealed)[1]

    for position in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(
            (CallerError, IntegrityError, PermanentDependencyError)
        ) as info:
            await unseal_bytes(damaged, keys, CONTEXT)
        if position < 4:
            assert type(info.value) is CallerError
        elif position >= header_size:
            _tampered(info, (position - header_size) // RECORD)


async def test_envelope_header_flips_rejected_by_streaming_reader() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(CHUNK + 300, seed=12))
    header_size = EnvelopeHeader.read(sealed)[1]

    for position in range(header_size):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x80
        with pytest.raises((CallerError, IntegrityError, PermanentDependencyError)):
            await collect(unseal(cut(damaged, [100]), keys, CONTEXT))


async def test_envelope_truncation_at_every_offset_is_rejected() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(2 * CHUNK + 10, seed=13))

    for length in range(len(sealed)):
        with pytest.raises(IntegrityError) as info:
            await unseal_bytes(sealed[:length], keys, CONTEXT)
        assert info.value.reason is Reason.CIPHERTEXT_TAMPERED


@pytest.mark.parametrize("kept_chunks", [0, 1, 2, 3, 4])
async def test_envelope_truncation_at_chunk_boundary_names_missing_chunk(
    kept_chunks: int,
) -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(4 * CHUNK, seed=14))
    header, chunks = split(sealed)
    truncated = header + b"".join(chunks[:kept_chunks])

    with pytest.raises(IntegrityError) as info:
        await collect(unseal(cut(truncated, [333]), keys, CONTEXT))

    _tampered(info, kept_chunks)
    assert "truncated" in str(info.value)


@settings(max_examples=30, deadline=None)
@given(cut_at=st.floats(0.0, 0.9999), piece=st.integers(1, 3 * CHUNK))
def test_envelope_truncation_at_random_offset_streaming(
    cut_at: float, piece: int
) -> None:
    keys = FakeKeyService()

    async def attempt() -> None:
        sealed = await seal_small(keys, random_bytes(3 * CHUNK + 99, seed=15))
        truncated = sealed[: int(len(sealed) * cut_at)]
        await collect(unseal(cut(truncated, [piece]), keys, CONTEXT))

    with pytest.raises(IntegrityError) as info:
        run(attempt())
    assert info.value.reason is Reason.CIPHERTEXT_TAMPERED


@pytest.mark.parametrize(
    ("order", "failing_chunk"),
    [
        ([1, 0, 2, 3], 0),  # reordered
        ([0, 0, 1, 2, 3], 1),  # duplicated
        ([0, 2, 3], 1),  # dropped
        ([0, 1, 3], 2),  # final chunk moved up
        ([0, 1, 2, 3, 3], 3),  # final chunk repeated: trailing bytes
    ],
)
async def test_envelope_chunk_rearrangement_is_rejected(
    order: list[int], failing_chunk: int
) -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(3 * CHUNK + 50, seed=16))
    header, chunks = split(sealed)
    rearranged = header + b"".join(chunks[i] for i in order)

    with pytest.raises(IntegrityError) as streaming:
        await collect(unseal(cut(rearranged, [4000]), keys, CONTEXT))
    with pytest.raises(IntegrityError) as buffered:
        await unseal_bytes(rearranged, keys, CONTEXT)

    _tampered(streaming, failing_chunk)
    _tampered(buffered, failing_chunk)


async def test_envelope_trailing_bytes_after_final_chunk_are_rejected() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(CHUNK + 5, seed=17))

    with pytest.raises(IntegrityError) as info:
        await collect(unseal(once(sealed + b"\x00"), keys, CONTEXT))

    _tampered(info, 1)


async def test_envelope_header_swapped_between_objects_is_rejected() -> None:
    keys = FakeKeyService()
    first = await seal_small(keys, random_bytes(2 * CHUNK + 1, seed=18))
    second = await seal_small(keys, random_bytes(2 * CHUNK + 1, seed=19))
    header_one, _ = split(first)
    _, chunks_two = split(second)

    with pytest.raises(IntegrityError) as info:
        await unseal_bytes(header_one + b"".join(chunks_two), keys, CONTEXT)

    _tampered(info, 0)


async def test_envelope_chunks_spliced_from_same_context_object_are_rejected() -> None:
    keys = FakeKeyService()
    first = await seal_small(keys, random_bytes(2 * CHUNK + 1, seed=20))
    second = await seal_small(keys, random_bytes(2 * CHUNK + 1, seed=21))
    header, chunks_one = split(first)
    _, chunks_two = split(second)
    spliced = header + chunks_one[0] + chunks_two[1] + chunks_one[2]

    with pytest.raises(IntegrityError) as info:
        await collect(unseal(once(spliced), keys, CONTEXT))

    _tampered(info, 1)


@pytest.mark.parametrize(
    "expected",
    [
        OTHER_CONTEXT,
        {**CONTEXT, "purpose": "result"},
        {key: value for key, value in CONTEXT.items() if key != "tenant"},
        {**CONTEXT, "extra": "x"},
    ],
)
async def test_envelope_wrong_expected_context_fails_before_kms(
    expected: dict[str, str],
) -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, b"pixels")

    with pytest.raises(KeyContextMismatchError) as streaming:
        await collect(unseal(once(sealed), keys, expected))
    with pytest.raises(KeyContextMismatchError) as buffered:
        await unseal_bytes(sealed, keys, expected)

    for info in (streaming, buffered):
        assert info.value.reason is Reason.KEY_CONTEXT_MISMATCH
        assert "st-mary" not in str(info.value)
    assert keys.operations("Decrypt") == []


async def test_envelope_doctored_header_context_fails_at_kms() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, random_bytes(100, seed=22))
    header = EnvelopeHeader.read(sealed)[0]
    _, chunks = split(sealed)
    doctored = EnvelopeHeader(
        header.key_id,
        header.ciphertext_blob,
        OTHER_CONTEXT,
        header.chunk_size,
        header.nonce_prefix,
    )

    with pytest.raises(PermanentDependencyError) as info:
        await unseal_bytes(doctored.encode() + b"".join(chunks), keys, OTHER_CONTEXT)

    assert info.value.reason is Reason.INVALID_CIPHERTEXT
    assert len(keys.operations("Decrypt")) == 1


async def test_envelope_wrong_magic_is_a_caller_error() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, b"pixels")
    png = b"\x89PNG\r\n\x1a\n" + sealed[8:]

    with pytest.raises(CallerError) as streaming:
        await collect(unseal(cut(png, [3]), keys, CONTEXT))
    with pytest.raises(CallerError) as buffered:
        await unseal_bytes(png, keys, CONTEXT)

    for info in (streaming, buffered):
        assert type(info.value) is CallerError
        assert info.value.reason is Reason.INVALID_REQUEST
        assert "b'OBSC'" in str(info.value)


async def test_envelope_unknown_version_is_refused() -> None:
    keys = FakeKeyService()
    sealed = bytearray(await seal_small(keys, b"pixels"))
    sealed[4] = 2

    with pytest.raises(IntegrityError, match="version 2 is not supported"):
        await collect(unseal(once(sealed), keys, CONTEXT))
    assert keys.operations("Decrypt") == []


@pytest.mark.parametrize("claimed", [0, 64 * 1024 + 1, 2**32 - 1])
async def test_envelope_oversized_header_length_refused_before_reading_it(
    claimed: int,
) -> None:
    keys = FakeKeyService()
    preamble = b"OBSC\x01" + claimed.to_bytes(4, "big")

    async def preamble_then_nothing() -> AsyncIterator[bytes]:
        yield preamble
        raise AssertionError("the reader asked for header bytes it should refuse")

    with pytest.raises(IntegrityError, match=f"claims a {claimed}-byte map"):
        await collect(unseal(preamble_then_nothing(), keys, CONTEXT))
    with pytest.raises(IntegrityError, match=f"claims a {claimed}-byte map"):
        EnvelopeHeader.read(preamble)


@pytest.mark.parametrize("chunk_size", [CHUNK - 1, MAX_CHUNK_SIZE + 1, 0, -CHUNK])
async def test_envelope_seal_refuses_chunk_size_out_of_range(chunk_size: int) -> None:
    keys = FakeKeyService()

    with pytest.raises(CallerError, match=f"chunk size {chunk_size} is outside"):
        await seal_bytes(b"x", keys, KEY_ID, CONTEXT, chunk_size=chunk_size)
    with pytest.raises(CallerError):
        await collect(seal(once(b"x"), keys, KEY_ID, CONTEXT, chunk_size=chunk_size))
    assert keys.calls == []


async def test_envelope_seal_accepts_largest_chunk_size() -> None:
    keys = FakeKeyService()
    data = random_bytes(5000, seed=23)

    sealed = await seal_bytes(data, keys, KEY_ID, CONTEXT, chunk_size=MAX_CHUNK_SIZE)

    assert EnvelopeHeader.read(sealed)[0].chunk_size == MAX_CHUNK_SIZE
    assert (
        await unseal_bytes(sealed, keys, CONTEXT, max_chunk_size=MAX_CHUNK_SIZE) == data
    )


async def test_envelope_seal_refuses_non_text_context() -> None:
    keys = FakeKeyService()
    bad: dict[str, object] = {"job_id": 7}

    with pytest.raises(CallerError, match="'job_id' is not text to text"):
        await seal_bytes(b"x", keys, KEY_ID, bad)  # type: ignore[arg-type]
    assert keys.calls == []


async def test_envelope_unseal_refuses_chunks_over_reader_limit_before_kms() -> None:
    keys = FakeKeyService()
    sealed = await seal_small(keys, b"x", chunk_size=2 * CHUNK)

    with pytest.raises(CallerError, match=f"chunk size {2 * CHUNK} exceeds"):
        await collect(unseal(once(sealed), keys, CONTEXT, max_chunk_size=CHUNK))
    assert keys.operations("Decrypt") == []


async def test_envelope_read_header_exposes_key_and_context_without_kms() -> None:
    keys = FakeKeyService()
    data = random_bytes(CHUNK + 9, seed=24)
    sealed = await seal_small(keys, data)

    header, rest = await read_header(cut(sealed, [1]))

    assert header.key_id == KEY_ID
    assert dict(header.encryption_context) == CONTEXT
    assert header.chunk_size == CHUNK
    assert keys.operations("Decrypt") == []
    assert await collect(unseal_body(header, rest, keys, CONTEXT)) == data


async def test_envelope_passes_recipient_to_key_service() -> None:
    keys = FakeKeyService()
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    recipient = Recipient(b"attestation-document", private_key)

    sealed = await seal_bytes(b"x", keys, KEY_ID, CONTEXT, recipient=recipient)
    await unseal_bytes(sealed, keys, CONTEXT, recipient=recipient)

    assert [call.recipient for call in keys.calls] == [recipient, recipient]
    assert [call.operation for call in keys.calls] == ["GenerateDataKey", "Decrypt"]


async def test_envelope_objects_get_fresh_keys_and_nonce_prefixes() -> None:
    keys = FakeKeyService()

    first = EnvelopeHeader.read(await seal_small(keys, b"same"))[0]
    second = EnvelopeHeader.read(await seal_small(keys, b"same"))[0]

    assert first.nonce_prefix != second.nonce_prefix
    assert first.ciphertext_blob != second.ciphertext_blob
    assert len(keys.operations("GenerateDataKey")) == 2
