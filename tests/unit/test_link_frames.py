"""The frame format, payload codecs and the sans-IO decoder of the link."""

from __future__ import annotations

import hashlib
import itertools
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import Reason
from shared.link.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MIN_MAX_FRAME_SIZE,
    BodyEnd,
    Cancel,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameTooLargeError,
    FrameType,
    Hello,
    JobHeader,
    LinkClosedError,
    Ping,
    ProtocolError,
    ResultHeader,
    Role,
    VersionMismatchError,
    encode_frame,
    encode_header,
)


def sample_frames() -> list[Frame]:
    return [
        Hello(Role.PROXY).to_frame(),
        Frame(FrameType.BODY, b""),
        Frame(FrameType.BODY, b"\x00"),
        JobHeader("job-1", 1000, nonce=b"n" * 16).to_frame(),
        Frame(FrameType.BODY, bytes(range(256)) * 4),
        BodyEnd.of(b"abc").to_frame(),
        Frame(FrameType.PING, b""),
        Ping(7).to_frame(FrameType.PONG),
    ]


STREAM = b"".join(map(encode_frame, sample_frames()))


def test_decoder_every_single_split_point_yields_the_same_frames() -> None:
    for split in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(STREAM[:split]) + decoder.feed(STREAM[split:])
        decoder.eof()
        assert frames == sample_frames(), f"split at {split}"


def test_decoder_byte_at_a_time_yields_the_same_frames() -> None:
    decoder = FrameDecoder()
    frames = [f for i in range(len(STREAM)) for f in decoder.feed(STREAM[i : i + 1])]
    assert frames == sample_frames()
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_decoder_any_set_of_splits_yields_the_same_frames(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = FrameDecoder()
    frames = [
        f for a, b in itertools.pairwise(bounds) for f in decoder.feed(STREAM[a:b])
    ]
    assert frames == sample_frames()


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_decoder_eof_inside_a_frame_raises_never_a_short_frame(cut: int) -> None:
    decoder = FrameDecoder()
    data = encode_frame(Frame(FrameType.BODY, b"x" * 10))
    assert decoder.feed(data[:cut]) == []
    with pytest.raises(LinkClosedError, match=f"after {cut} of its bytes") as info:
        decoder.eof()
    assert info.value.mid_frame
    assert info.value.retryable


def test_decoder_oversized_length_refused_once_header_is_in() -> None:
    decoder = FrameDecoder(MIN_MAX_FRAME_SIZE)
    header = encode_header(FrameType.BODY, MIN_MAX_FRAME_SIZE + 1)
    assert decoder.feed(header[:-1]) == []
    with pytest.raises(FrameTooLargeError, match=str(MIN_MAX_FRAME_SIZE + 1)):
        decoder.feed(header[-1:])
    assert decoder.buffered == 0
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"more")


def test_decoder_frame_at_exactly_the_maximum_is_accepted() -> None:
    decoder = FrameDecoder(MIN_MAX_FRAME_SIZE)
    frame = Frame(FrameType.BODY, b"z" * MIN_MAX_FRAME_SIZE)
    assert decoder.feed(encode_frame(frame)) == [frame]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (struct.pack(">BBI", 99, 0, 0), "frame type 99"),
        (struct.pack(">BBI", FrameType.BODY, 1, 0), "flags 0x01"),
    ],
)
def test_decoder_unknown_type_or_flags_is_a_protocol_error(
    header: bytes, message: str
) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(header)


def test_decoder_max_frame_size_below_floor_refused() -> None:
    with pytest.raises(ProtocolError, match="max frame size 10"):
        FrameDecoder(10)


def test_hello_round_trips_and_names_an_unknown_version() -> None:
    hello = Hello(Role.WORKER, max_frame_size=DEFAULT_MAX_FRAME_SIZE)
    frame = hello.to_frame(FrameType.HELLO_ACK)
    assert Hello.from_frame(frame) == hello
    with pytest.raises(VersionMismatchError, match="version 9 is not supported"):
        Hello.from_frame(Hello(Role.WORKER, version=9).to_frame())


def test_hello_without_magic_is_refused() -> None:
    with pytest.raises(ProtocolError, match="does not start with"):
        Hello.from_frame(Frame(FrameType.HELLO, b"GET / HTTP/1.1"))


def test_job_header_round_trips() -> None:
    header = JobHeader("job-9", 5, nonce=b"\x01" * 32, attributes={"k": "v"})
    assert JobHeader.from_frame(header.to_frame()) == header


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xff", "not valid CBOR"),
        (cbor2.dumps({"job_id": "a"}), "expected"),
        (cbor2.dumps([1, 2]), "expected"),
    ],
)
def test_job_header_malformed_payload_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        JobHeader.from_frame(Frame(FrameType.JOB, payload))


def test_job_header_bool_size_is_refused() -> None:
    data = {
        "job_id": "a",
        "body_size": True,
        "nonce": b"",
        "chunk_size": 1,
        "attributes": {},
    }
    with pytest.raises(ProtocolError, match="'body_size' is bool"):
        JobHeader.from_frame(Frame(FrameType.JOB, cbor2.dumps(data)))


@pytest.mark.parametrize("job_id", ["", "x" * 129, "a\nb"])
def test_job_header_bad_job_id_is_refused(job_id: str) -> None:
    with pytest.raises(ProtocolError, match="job id"):
        JobHeader(job_id, 0)


def test_result_header_round_trips() -> None:
    header = ResultHeader("job-2", 77, receipt=b"cose", attributes={"a": "b"})
    assert ResultHeader.from_frame(header.to_frame()) == header


def test_result_header_from_job_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="expected a RESULT frame, got JOB"):
        ResultHeader.from_frame(JobHeader("j", 1).to_frame())


def test_body_end_carries_count_and_sha256() -> None:
    end = BodyEnd.from_frame(BodyEnd.of(b"hello").to_frame())
    assert end == BodyEnd(5, hashlib.sha256(b"hello").digest())
    with pytest.raises(ProtocolError, match="END payload is 3 bytes"):
        BodyEnd.from_frame(Frame(FrameType.END, b"abc"))


def test_error_info_round_trips_into_a_peer_error() -> None:
    info = ErrorInfo(Reason.THROTTLED, "KMS throttled", retryable=True, job_id="j")
    error = ErrorInfo.from_frame(info.to_frame()).to_exception()
    assert (error.reason, error.retryable, error.job_id) == (
        Reason.THROTTLED,
        True,
        "j",
    )
    assert "KMS throttled" in str(error)


def test_error_info_unknown_reason_is_refused() -> None:
    data = {"reason": "bogus", "message": "m", "retryable": False, "job_id": None}
    with pytest.raises(ProtocolError, match="'bogus'"):
        ErrorInfo.from_frame(Frame(FrameType.ERROR, cbor2.dumps(data)))


def test_cancel_and_ping_round_trip() -> None:
    assert Cancel.from_frame(Cancel("job-3").to_frame()) == Cancel("job-3")
    assert Ping.from_frame(Ping(2**64 - 1).to_frame()) == Ping(2**64 - 1)
    with pytest.raises(ProtocolError, match="not UTF-8"):
        Cancel.from_frame(Frame(FrameType.CANCEL, b"\xff"))


def test_frame_repr_hides_payload() -> None:
    assert repr(Frame(FrameType.BODY, b"secret")) == "Frame(BODY, 6 bytes)"
