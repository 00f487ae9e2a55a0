"""Frames of the proxy-worker link, their payloads, and a sans-IO decoder.

A frame is a 6-byte header, then the payload::

    +------+-------+------------------+-----------------+
    | type | flags | length (uint32,  | payload         |
    | u8   | u8    | big-endian)      | (length bytes)  |
    +------+-------+------------------+-----------------+

``length`` counts the payload only. Each side announces in its HELLO the largest
payload it accepts (its *max frame size*); a longer length is refused as soon as the
header is in, before any of the payload is read or allocated. No flags are defined
in version 1 and a frame with any flag set is refused.

Errors of the link, under the shared tree::

    LinkError (RetryableDependencyError)   the connection is gone or stalled
    ├── LinkClosedError                    end of stream (between or inside frames)
    ├── LinkTimeoutError                   an operation outlived its timeout
    └── JobCancelledError                  the peer sent CANCEL for the job
    ProtocolError (PermanentDependencyError)  malformed traffic; close the connection
    ├── FrameTooLargeError                 length above the receiver's maximum
    ├── VersionMismatchError               handshake with an unsupported version
    └── BodyMismatchError                  END disagrees with the body received
    PeerError (DependencyError)            the peer sent ERROR; reason and retryable
                                           are the peer's
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import cbor2

from shared.errors import (
    DependencyError,
    PermanentDependencyError,
    Reason,
    RetryableDependencyError,
)

HEADER = struct.Struct(">BBI")
HEADER_SIZE = HEADER.size
MAGIC = b"OBSL"
PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
DEFAULT_MAX_FRAME_SIZE = 2 * 1024 * 1024
MIN_MAX_FRAME_SIZE = 64 * 1024
MAX_MAX_FRAME_SIZE = 2**32 - 1
MAX_JOB_ID_LENGTH = 128
MAX_NONCE_LENGTH = 64
MAX_ERROR_MESSAGE = 1000
DEFAULT_CHUNK_SIZE = 1024 * 1024 + 16

_HELLO = struct.Struct(">4sHBI")
_END = struct.Struct(">Q32s")
_PING = struct.Struct(">Q")


class LinkError(RetryableDependencyError):
    """The link failed in a way a fresh connection may cure."""


class LinkClosedError(LinkError):
    """The peer closed the stream; ``mid_frame`` says whether a frame was cut."""

    def __init__(self, message: str, *, mid_frame: bool = False) -> None:
        super().__init__(message)
        self.mid_frame = mid_frame


class LinkTimeoutError(LinkError):
    default_reason = Reason.TIMEOUT


class JobCancelledError(LinkError):
    """The sender gave up on the job mid-body; the connection stays usable."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class ProtocolError(PermanentDependencyError):
    """Malformed traffic: the connection cannot be trusted any further."""

    default_reason = Reason.INTERNAL


class FrameTooLargeError(ProtocolError):
    pass


class VersionMismatchError(ProtocolError):
    pass


class BodyMismatchError(ProtocolError):
    pass


class PeerError(DependencyError):
    """An ERROR frame from the peer, raised with the peer's reason and retryability."""

    def __init__(
        self, message: str, *, reason: Reason, retryable: bool, job_id: str | None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retryable = retryable
        self.job_id = job_id


class FrameType(IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    JOB = 3
    BODY = 4
    END = 5
    RESULT = 6
    ERROR = 7
    CANCEL = 8
    PING = 9
    PONG = 10
    CONTROL = 11
    CONTROL_REPLY = 12


class Role(IntEnum):
    PROXY = 1
    WORKER = 2


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes = b""
    flags: int = 0

    def __repr__(self) -> str:
        # Payloads are ciphertext, but there is no reason to put them in logs either.
        return f"Frame({self.type.name}, {len(self.payload)} bytes)"


def encode_header(frame_type: FrameType, length: int, flags: int = 0) -> bytes:
    return HEADER.pack(frame_type, flags, length)


def encode_frame(frame: Frame) -> bytes:
    """The frame as it travels; the stream layer writes it out in pieces."""
    return encode_header(frame.type, len(frame.payload), frame.flags) + frame.payload


def check_max_frame_size(value: int) -> int:
    if not MIN_MAX_FRAME_SIZE <= value <= MAX_MAX_FRAME_SIZE:
        raise ProtocolError(
            f"max frame size {value} is outside {MIN_MAX_FRAME_SIZE}.."
            f"{MAX_MAX_FRAME_SIZE}; announce a size in that range."
        )
    return value


def _expect(frame: Frame, frame_type: FrameType) -> None:
    if frame.type is not frame_type:
        raise ProtocolError(
            f"expected a {frame_type.name} frame, got {frame.type.name}; "
            "the peer is out of step with the link protocol."
        )


def _load_map(frame: Frame, keys: frozenset[str]) -> dict[str, Any]:
    try:
        value = cbor2.loads(frame.payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(
            f"{frame.type.name} payload of {len(frame.payload)} bytes is not valid "
            "CBOR; the peer must send a CBOR map."
        ) from exc
    if not isinstance(value, dict) or set(value) != keys:
        found = sorted(map(str, value)) if isinstance(value, dict) else type(value)
        raise ProtocolError(
            f"{frame.type.name} payload has fields {found}, expected {sorted(keys)}."
        )
    return value


def _field(data: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    value = data[name]
    # bool is an int subclass; a size must not arrive as True.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(
            f"field {name!r} is {type(value).__name__}, expected {kind.__name__}."
        )
    return value


def check_job_id(job_id: str) -> str:
    if not job_id or len(job_id) > MAX_JOB_ID_LENGTH or not job_id.isprintable():
        raise ProtocolError(
            f"job id {job_id[:MAX_JOB_ID_LENGTH]!r} must be 1..{MAX_JOB_ID_LENGTH} "
            "printable characters."
        )
    return job_id


def _check_size(name: str, value: int) -> int:
    if value < 0:
        raise ProtocolError(f"{name} {value} is negative; sizes count bytes.")
    return value


def _check_attributes(value: Mapping[Any, Any]) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ProtocolError("attributes must map strings to strings.")
    return dict(value)


@dataclass(frozen=True)
class Hello:
    """HELLO and HELLO_ACK: who speaks, which version, the largest frame accepted."""

    role: Role
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    version: int = PROTOCOL_VERSION

    def to_frame(self, frame_type: FrameType = FrameType.HELLO) -> Frame:
        payload = _HELLO.pack(MAGIC, self.version, self.role, self.max_frame_size)
        return Frame(frame_type, payload)

    @classmethod
    def from_frame(cls, frame: Frame) -> Hello:
        if frame.type not in (FrameType.HELLO, FrameType.HELLO_ACK):
            _expect(frame, FrameType.HELLO)
        # Magic and version come first so any future version can still be named.
        if len(frame.payload) < 6 or frame.payload[:4] != MAGIC:
            raise ProtocolError(
                f"{frame.type.name} does not start with {MAGIC!r}; the peer does "
                "not speak the Obscura link protocol."
            )
        (version,) = struct.unpack_from(">H", frame.payload, 4)
        if version not in SUPPORTED_VERSIONS:
            raise VersionMismatchError(
                f"link protocol version {version} is not supported; this side "
                f"speaks {sorted(SUPPORTED_VERSIONS)}, upgrade one of the two."
            )
        if len(frame.payload) != _HELLO.size:
            raise ProtocolError(
                f"{frame.type.name} payload is not {_HELLO.size} bytes."
            )
        _, _, role, max_frame_size = _HELLO.unpack(frame.payload)
        if role not in Role.__members__.values():
            raise ProtocolError(f"role {role} is neither proxy nor worker.")
        return cls(Role(role), check_max_frame_size(max_frame_size), version)


@dataclass(frozen=True)
class JobHeader:
    """JOB: what the body that follows is. ``nonce`` is the caller's receipt nonce."""

    job_id: str
    body_size: int
    nonce: bytes = b""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    attributes: Mapping[str, str] = field(default_factory=dict)

    _KEYS = frozenset({"job_id", "body_size", "nonce", "chunk_size", "attributes"})

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        _check_size("body size", self.body_size)
        _check_size("chunk size", self.chunk_size)
        if len(self.nonce) > MAX_NONCE_LENGTH:
            raise ProtocolError(
                f"nonce of {len(self.nonce)} bytes is longer than {MAX_NONCE_LENGTH}."
            )

    def to_frame(self) -> Frame:
        data = {
            "job_id": self.job_id,
            "body_size": self.body_size,
            "nonce": self.nonce,
            "chunk_size": self.chunk_size,
            "attributes": dict(self.attributes),
        }
        return Frame(FrameType.JOB, cbor2.dumps(data, canonical=True))

    @classmethod
    def from_frame(cls, frame: Frame) -> JobHeader:
        _expect(frame, FrameType.JOB)
        data = _load_map(frame, cls._KEYS)
        return cls(
            job_id=_field(data, "job_id", str),
            body_size=_field(data, "body_size", int),
            nonce=_field(data, "nonce", bytes),
            chunk_size=_field(data, "chunk_size", int),
            attributes=_check_attributes(_field(data, "attributes", dict)),
        )


@dataclass(frozen=True)
class ResultHeader:
    """RESULT: the sealed prediction follows as a body; the receipt travels here."""

    job_id: str
    body_size: int
    receipt: bytes = b""
    attributes: Mapping[str, str] = field(default_factory=dict)

    _KEYS = frozenset({"job_id", "body_size", "receipt", "attributes"})

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        _check_size("body size", self.body_size)

    def to_frame(self) -> Frame:
        data = {
            "job_id": self.job_id,
            "body_size": self.body_size,
            "receipt": self.receipt,
            "attributes": dict(self.attributes),
        }
        return Frame(FrameType.RESULT, cbor2.dumps(data, canonical=True))

    @classmethod
    def from_frame(cls, frame: Frame) -> ResultHeader:
        _expect(frame, FrameType.RESULT)
        data = _load_map(frame, cls._KEYS)
        return cls(
            job_id=_field(data, "job_id", str),
            body_size=_field(data, "body_size", int),
            receipt=_field(data, "receipt", bytes),
            attributes=_check_attributes(_field(data, "attributes", dict)),
        )


@dataclass(frozen=True)
class BodyEnd:
    """END: byte count and SHA-256 of the body just sent, checked by the receiver."""

    byte_count: int
    sha256: bytes

    def to_frame(self) -> Frame:
        return Frame(FrameType.END, _END.pack(self.byte_count, self.sha256))

    @classmethod
    def of(cls, body: bytes) -> BodyEnd:
        return cls(len(body), hashlib.sha256(body).digest())

    @classmethod
    def from_frame(cls, frame: Frame) -> BodyEnd:
        _expect(frame, FrameType.END)
        if len(frame.payload) != _END.size:
            raise ProtocolError(
                f"END payload is {len(frame.payload)} bytes, expected {_END.size}."
            )
        byte_count, digest = _END.unpack(frame.payload)
        return cls(byte_count, digest)


@dataclass(frozen=True)
class ErrorInfo:
    """ERROR: a reason code from the shared tree, one sentence, and retryability."""

    reason: Reason
    message: str
    retryable: bool
    job_id: str | None = None

    _KEYS = frozenset({"reason", "message", "retryable", "job_id"})

    def to_frame(self) -> Frame:
        data = {
            "reason": self.reason.value,
            "message": self.message[:MAX_ERROR_MESSAGE],
            "retryable": self.retryable,
            "job_id": self.job_id,
        }
        return Frame(FrameType.ERROR, cbor2.dumps(data, canonical=True))

    @classmethod
    def from_frame(cls, frame: Frame) -> ErrorInfo:
        _expect(frame, FrameType.ERROR)
        data = _load_map(frame, cls._KEYS)
        reason = _field(data, "reason", str)
        if reason not in Reason.__members__.values():
            raise ProtocolError(f"ERROR reason {reason!r} is not a known reason code.")
        job_id = data["job_id"]
        if job_id is not None:
            check_job_id(_field(data, "job_id", str))
        return cls(
            Reason(reason),
            _field(data, "message", str),
            _field(data, "retryable", bool),
            job_id,
        )

    def to_exception(self) -> PeerError:
        return PeerError(
            f"peer reported: {self.message}",
            reason=self.reason,
            retryable=self.retryable,
            job_id=self.job_id,
        )


@dataclass(frozen=True)
class Cancel:
    """CANCEL: the sender abandons the job; a body in progress ends here."""

    job_id: str

    def to_frame(self) -> Frame:
        return Frame(FrameType.CANCEL, self.job_id.encode())

    @classmethod
    def from_frame(cls, frame: Frame) -> Cancel:
        _expect(frame, FrameType.CANCEL)
        try:
            job_id = frame.payload.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("CANCEL job id is not UTF-8.") from exc
        return cls(check_job_id(job_id))


@dataclass(frozen=True)
class Control:
    """CONTROL and CONTROL_REPLY: an operation name and its CBOR fields.

    Carries the proxy's credential hand-off and status queries. Fields may hold
    credentials, so like every payload they stay out of reprs and logs.
    """

    op: str
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)

    _KEYS = frozenset({"op", "fields"})

    def to_frame(self, frame_type: FrameType = FrameType.CONTROL) -> Frame:
        data = {"op": self.op, "fields": dict(self.fields)}
        return Frame(frame_type, cbor2.dumps(data, canonical=True))

    @classmethod
    def from_frame(cls, frame: Frame) -> Control:
        if frame.type not in (FrameType.CONTROL, FrameType.CONTROL_REPLY):
            _expect(frame, FrameType.CONTROL)
        data = _load_map(frame, cls._KEYS)
        return cls(op=_field(data, "op", str), fields=_field(data, "fields", dict))


@dataclass(frozen=True)
class Ping:
    """PING and PONG: an opaque token the PONG echoes."""

    token: int

    def to_frame(self, frame_type: FrameType = FrameType.PING) -> Frame:
        return Frame(frame_type, _PING.pack(self.token))

    @classmethod
    def from_frame(cls, frame: Frame) -> Ping:
        if frame.type not in (FrameType.PING, FrameType.PONG):
            _expect(frame, FrameType.PING)
        if len(frame.payload) != _PING.size:
            raise ProtocolError(f"{frame.type.name} payload is not {_PING.size} bytes.")
        return cls(_PING.unpack(frame.payload)[0])


class FrameDecoder:
    """Turns stream bytes into frames, whatever the read boundaries were.

    Sans-IO: it never reads, so the same code serves every transport and every test
    split. After a ``ProtocolError`` the decoder stays failed, since the stream can
    no longer be re-synchronised.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = check_max_frame_size(max_frame_size)
        self._header = bytearray()
        self._parts: list[bytes] = []
        self._type: FrameType | None = None
        self._flags = 0
        self._missing = 0
        self._failure: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of a frame received so far but not yet returned."""
        if self._type is None:
            return len(self._header)
        return HEADER_SIZE + sum(map(len, self._parts))

    def feed(self, data: bytes) -> list[Frame]:
        if self._failure is not None:
            raise self._failure
        frames: list[Frame] = []
        view = memoryview(data)
        while view:
            view = self._consume(view, frames)
        return frames

    def eof(self) -> None:
        """Declares the end of the stream; raises if it cut a frame short."""
        if self.buffered:
            raise LinkClosedError(
                f"link closed inside a frame after {self.buffered} of its bytes; "
                "the peer stopped mid-write, reconnect and resend.",
                mid_frame=True,
            )

    def _consume(self, view: memoryview, frames: list[Frame]) -> memoryview:
        if self._type is None:
            take = HEADER_SIZE - len(self._header)
            self._header += view[:take]
            if len(self._header) == HEADER_SIZE:
                self._start_frame(frames)
            return view[take:]
        take = min(self._missing, len(view))
        self._parts.append(bytes(view[:take]))
        self._missing -= take
        if not self._missing:
            self._finish_frame(frames)
        return view[take:]

    def _start_frame(self, frames: list[Frame]) -> None:
        raw_type, flags, length = HEADER.unpack(self._header)
        self._header.clear()
        try:
            self._check_header(raw_type, flags, length)
        except ProtocolError as exc:
            self._failure = exc
            raise
        self._type, self._flags, self._missing = FrameType(raw_type), flags, length
        if not length:
            self._finish_frame(frames)

    def _check_header(self, raw_type: int, flags: int, length: int) -> None:
        if raw_type not in FrameType.__members__.values():
            raise ProtocolError(f"frame type {raw_type} is unknown to this side.")
        if flags:
            raise ProtocolError(
                f"frame flags {flags:#04x} are set; version 1 defines none."
            )
        if length > self.max_frame_size:
            raise FrameTooLargeError(
                f"frame of {length} bytes is above the {self.max_frame_size}-byte "
                "maximum; split the data into BODY frames no longer than that."
            )

    def _finish_frame(self, frames: list[Frame]) -> None:
        assert self._type is not None
        payload = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        frames.append(Frame(self._type, payload, self._flags))
        self._parts, self._type = [], None
