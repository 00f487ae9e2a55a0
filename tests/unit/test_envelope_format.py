"""The envelope header codec and the synchronous chunk ciphers."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.envelope import read_header
from shared.envelope_format import (
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    ChunkOpener,
    ChunkSealer,
    EnvelopeHeader,
)
from shared.errors import CallerError, IntegrityError, InternalError, Reason
from tests.unit.envelope_helpers import CHUNK, once


def _fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "aead": "AES-256-GCM",
        "chunk_size": CHUNK,
        "ciphertext_blob": b"wrapped-data-key",
        "encryption_context": {"job_id": "job-1"},
        "key_id": "alias/obscura-test",
        "nonce_prefix": bytes(range(8)),
        "nonce_scheme": "prefix64-counter32",
    }
    fields.update(changes)
    return {name: value for name, value in fields.items() if value is not None}


def _framed(raw_map: bytes) -> bytes:
    return b"OBSC\x01" + len(raw_map).to_bytes(4, "big") + raw_map


def _canonical(**changes: object) -> bytes:
    return cbor2.dumps(_fields(**changes), canonical=True)


def _header(chunk_size: int = CHUNK) -> EnvelopeHeader:
    return EnvelopeHeader.new("alias/k", b"blob", {"job_id": "j"}, chunk_size)


MALFORMED = {
    "unknown aead": (_canonical(aead="AES-128-GCM"), "AEAD 'AES-128-GCM'"),
    "unknown scheme": (_canonical(nonce_scheme="random96"), "nonce scheme 'random96'"),
    "missing field": (_canonical(key_id=None), "missing ['key_id']"),
    "unknown field": (_canonical(comment="hi"), "unknown ['comment']"),
    "chunk size text": (_canonical(chunk_size="4096"), "'chunk_size' is a str"),
    "chunk size bool": (_canonical(chunk_size=True), "'chunk_size' is a bool"),
    "chunk size float": (_canonical(chunk_size=4096.0), "'chunk_size' is a float"),
    "chunk size small": (_canonical(chunk_size=1000), "chunk size 1000 is outside"),
    "short prefix": (_canonical(nonce_prefix=b"1234567"), "nonce prefix must be 8"),
    "context int": (_canonical(encryption_context={"a": 1}), "not text to text"),
    "empty key id": (_canonical(key_id=""), "key id '' must be"),
    "empty blob": (_canonical(ciphertext_blob=b""), "ciphertext blob"),
    "unsorted keys": (cbor2.dumps(dict(reversed(_fields().items()))), "canonical"),
    "trailing item": (_canonical() + b"\x00", "canonical"),
    "tagged value": (_canonical(key_id=datetime(2024, 1, 1, tzinfo=UTC)), "CBOR"),
    "array": (cbor2.dumps([1, 2, 3]), "not a map"),
    "garbage": (b"\xff\xfe", "not valid CBOR"),
    "integer keys": (cbor2.dumps({1: 2}), "not valid CBOR"),
    "deep nesting": (_canonical(encryption_context={"a": {"b": {"c": {}}}}), "CBOR"),
    "duplicate key": (b"\xa2\x61a\x01\x61a\x02", "not valid CBOR"),
}


@pytest.mark.parametrize(("raw_map", "fragment"), MALFORMED.values(), ids=MALFORMED)
def test_envelope_header_malformed_map_is_refused(
    raw_map: bytes, fragment: str
) -> None:
    with pytest.raises(IntegrityError) as info:
        EnvelopeHeader.parse(_framed(raw_map))

    assert type(info.value) is IntegrityError
    assert info.value.reason is Reason.CIPHERTEXT_TAMPERED
    assert fragment in str(info.value)


async def test_envelope_header_malformed_map_refused_by_stream_reader() -> None:
    with pytest.raises(IntegrityError, match="AEAD 'AES-128-GCM'"):
        await read_header(once(_framed(_canonical(aead="AES-128-GCM"))))


def test_envelope_header_valid_hand_built_map_parses() -> None:
    header = EnvelopeHeader.parse(_framed(_canonical()))

    assert header.key_id == "alias/obscura-test"
    assert header.nonce_prefix == bytes(range(8))
    assert header.encode() == _framed(_canonical())


@settings(max_examples=50, deadline=None)
@given(
    key_id=st.text(min_size=1, max_size=60),
    blob=st.binary(min_size=1, max_size=300),
    context=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=6),
    chunk_size=st.integers(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
    prefix=st.binary(min_size=8, max_size=8),
)
def test_envelope_header_encode_parse_round_trip(
    key_id: str, blob: bytes, context: dict[str, str], chunk_size: int, prefix: bytes
) -> None:
    header = EnvelopeHeader(key_id, blob, context, chunk_size, prefix)

    parsed = EnvelopeHeader.parse(header.encode())

    assert parsed == header
    assert parsed.encode() == header.encode()
    assert dict(parsed.encryption_context) == context


def test_envelope_header_parse_refuses_trailing_bytes() -> None:
    with pytest.raises(IntegrityError, match="followed by 3 unexpected bytes"):
        EnvelopeHeader.parse(_header().encode() + b"abc")


def test_envelope_header_read_reports_truncated_header() -> None:
    encoded = _header().encode()

    with pytest.raises(IntegrityError, match="truncated"):
        EnvelopeHeader.read(encoded[:-1])
    with pytest.raises(IntegrityError, match="truncated"):
        EnvelopeHeader.read(encoded[:3])


def test_envelope_header_context_is_read_only_copy() -> None:
    context = {"job_id": "j"}
    header = EnvelopeHeader.new("alias/k", b"blob", context)
    context["job_id"] = "changed"

    assert header.encryption_context["job_id"] == "j"
    with pytest.raises(TypeError):
        header.encryption_context["job_id"] = "x"  # type: ignore[index]


def test_envelope_header_repr_leaves_out_blob_and_prefix() -> None:
    header = EnvelopeHeader(
        "alias/k", b"\xab" * 40, {"job_id": "j"}, CHUNK, b"\xcd" * 8
    )

    text = repr(header)

    assert "alias/k" in text
    assert "ab" * 8 not in text and "\\xab" not in text
    assert "\\xcd" not in text


def test_envelope_chunk_ciphers_round_trip_and_wipe_bytearray_keys() -> None:
    header = _header()
    key = bytearray(os.urandom(32))
    opener_key = bytearray(key)

    sealer = ChunkSealer(header, key)
    opener = ChunkOpener(header, opener_key)
    sealed = [
        sealer.seal_chunk(b"a" * CHUNK, final=False),
        sealer.seal_chunk(b"b", True),
    ]

    assert key == bytes(32) and opener_key == bytes(32)
    assert [
        opener.open_chunk(sealed[0], False),
        opener.open_chunk(sealed[1], True),
    ] == [
        b"a" * CHUNK,
        b"b",
    ]
    assert sealer.finished and opener.finished and opener.index == 2


def test_envelope_chunk_cipher_repr_holds_no_key() -> None:
    key = os.urandom(32)

    text = repr(ChunkSealer(_header(), key)) + repr(ChunkOpener(_header(), key))

    assert key.hex() not in text and repr(key) not in text
    assert "ChunkSealer(chunk_size=4096, index=0, finished=False)" in text


def test_envelope_chunk_sealer_refuses_wrong_sizes_and_reuse() -> None:
    sealer = ChunkSealer(_header(), os.urandom(32))

    with pytest.raises(CallerError, match="non-final chunks must be exactly 4096"):
        sealer.seal_chunk(b"x" * 100, final=False)
    with pytest.raises(CallerError, match="must be shorter than the chunk size"):
        sealer.seal_chunk(b"x" * CHUNK, final=True)
    sealer.seal_chunk(b"", final=True)
    with pytest.raises(CallerError, match="already sealed"):
        sealer.seal_chunk(b"", final=True)


def test_envelope_chunk_opener_refuses_data_after_final_and_bad_sizes() -> None:
    header = _header()
    key = os.urandom(32)
    final = ChunkSealer(header, key).seal_chunk(b"end", final=True)
    opener = ChunkOpener(header, key)

    with pytest.raises(IntegrityError, match="non-final chunks are exactly 4112"):
        opener.open_chunk(final, final=False)
    with pytest.raises(IntegrityError, match="final chunk 0 is 15 bytes"):
        opener.open_chunk(b"x" * (TAG_SIZE - 1), final=True)
    assert opener.open_chunk(final, final=True) == b"end"
    with pytest.raises(IntegrityError, match="follow the final chunk 0"):
        opener.open_chunk(final, final=True)


def test_envelope_chunk_opener_rejects_chunk_under_another_header() -> None:
    key = os.urandom(32)
    sealed = ChunkSealer(_header(), key).seal_chunk(b"data", final=True)

    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        ChunkOpener(_header(), key).open_chunk(sealed, final=True)


def test_envelope_chunk_cipher_refuses_wrong_key_length() -> None:
    with pytest.raises(InternalError, match="data key is 16 bytes"):
        ChunkSealer(_header(), os.urandom(16))
