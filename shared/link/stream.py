"""The link over an asyncio byte stream: handshake, frames, bodies, timeouts.

One ``Link`` wraps a reader and a writer (an ``asyncio.StreamReader`` and
``StreamWriter`` or anything shaped like them). Every operation has a finite timeout.
Its states are simple: open, or closed for good. A read that times out between
frames leaves the link open, since the decoder keeps any partial frame. Anything that
may have left a frame half-written, or a body half-read, closes it: an asyncio
cancellation, a write timeout, a protocol error, a consumer that stops reading a body
early. A body the sender cannot finish for a reason of its own ends with a CANCEL
frame instead, and the link stays usable.

One task reads at a time; writes from several tasks are serialised per frame.
Methods take their own ``timeout`` rather than relying on a caller's
``asyncio.timeout``: expiry must become a retryable ``LinkTimeoutError`` and must
close the link or keep it by the rules above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from shared.errors import CallerError, InternalError, ObscuraError, Reason
from shared.link.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MIN_MAX_FRAME_SIZE,
    BodyEnd,
    BodyMismatchError,
    Cancel,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameTooLargeError,
    FrameType,
    Hello,
    JobCancelledError,
    JobHeader,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    PeerError,
    Ping,
    ProtocolError,
    ResultHeader,
    Role,
    check_job_id,
    check_max_frame_size,
    encode_header,
)
from shared.logging import get_logger

MAX_WRITE_PIECE = 32 * 1024
"""Largest single write: bigger vsock writes are a known path to corrupted streams."""

READ_SIZE = 256 * 1024

log = get_logger(__name__)

BodySource = Iterable[bytes] | AsyncIterable[bytes]


class ByteReader(Protocol):
    async def read(self, n: int = ...) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(frozen=True)
class LinkLimits:
    """Sizes and timeouts (seconds) of one link; services fill it from settings."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    write_piece_size: int = MAX_WRITE_PIECE
    handshake_timeout: float = 5.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        try:
            check_max_frame_size(self.max_frame_size)
        except ProtocolError as exc:
            raise CallerError(str(exc)) from exc
        if not HEADER_SIZE < self.write_piece_size <= MAX_WRITE_PIECE:
            raise CallerError(
                f"write piece size {self.write_piece_size} must be above "
                f"{HEADER_SIZE} and at most {MAX_WRITE_PIECE} bytes."
            )
        timeouts = (self.handshake_timeout, self.read_timeout, self.write_timeout)
        if min(*timeouts, self.close_timeout) <= 0:
            raise CallerError(f"link timeouts {timeouts} must all be positive.")


@contextlib.asynccontextmanager
async def _deadline(seconds: float, what: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise LinkTimeoutError(
            f"{what} took longer than {seconds} s; the peer is stalled, "
            "retry on a fresh connection."
        ) from exc


async def _chunks(source: BodySource) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
    else:
        for chunk in source:
            yield chunk


class Link:
    """A framed, handshaken connection between enclave proxy and enclave worker."""

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        *,
        limits: LinkLimits | None = None,
    ) -> None:
        self.limits = limits or LinkLimits()
        self.peer: Hello | None = None
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(self.limits.max_frame_size)
        self._ready: deque[Frame] = deque()
        self._write_lock = asyncio.Lock()
        self._closed_by: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed_by is not None

    @property
    def send_limit(self) -> int:
        """The largest payload the peer accepts, as announced in its HELLO."""
        return self.peer.max_frame_size if self.peer else MIN_MAX_FRAME_SIZE

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._abandon("closed locally")
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.limits.close_timeout):
                await self._writer.wait_closed()

    def _abandon(self, cause: str) -> None:
        if self._closed_by is None:
            self._closed_by = cause
            log.debug("link_closed", cause=cause)
        self._writer.close()

    def _check_open(self) -> None:
        if self._closed_by is not None:
            raise LinkClosedError(
                f"link is closed ({self._closed_by}); open a new connection."
            )

    # Reading.

    async def read_frame(self, *, timeout: float | None = None) -> Frame:  # noqa: ASYNC109
        """The next frame; PING is answered here and never returned."""
        seconds = timeout or self.limits.read_timeout
        while True:
            async with _deadline(seconds, "reading a frame"):
                frame = await self._next_frame()
            if frame.type is not FrameType.PING:
                return frame
            pong = Ping.from_frame(frame).to_frame(FrameType.PONG)
            await self.write_frame(pong)

    async def _next_frame(self) -> Frame:
        self._check_open()
        while not self._ready:
            data = await self._read_some()
            try:
                if data:
                    self._ready.extend(self._decoder.feed(data))
                    continue
                self._decoder.eof()
            except (ProtocolError, LinkClosedError) as exc:
                self._abandon(type(exc).__name__)
                raise
            self._abandon("closed by the peer")
            raise LinkClosedError("link closed by the peer between frames.")
        return self._ready.popleft()

    async def _read_some(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except OSError as exc:
            self._abandon(type(exc).__name__)
            raise LinkClosedError(
                f"link read failed with {type(exc).__name__}; reconnect and resend."
            ) from exc

    # Writing.

    async def write_frame(
        self,
        frame: Frame,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Writes one frame in pieces of at most 32 KiB, draining after each."""
        if len(frame.payload) > self.send_limit:
            raise FrameTooLargeError(
                f"{frame.type.name} payload of {len(frame.payload)} bytes is above "
                f"the peer's {self.send_limit}-byte maximum; split it into a body."
            )
        seconds = timeout or self.limits.write_timeout
        async with self._write_lock:
            self._check_open()
            try:
                async with _deadline(seconds, f"writing a {frame.type.name} frame"):
                    await self._write_pieces(frame)
            except BaseException as exc:
                # Whatever stopped us, the peer may hold part of this frame.
                self._abandon(f"{type(exc).__name__} while writing")
                raise

    async def _write_pieces(self, frame: Frame) -> None:
        size = self.limits.write_piece_size
        first = size - HEADER_SIZE
        header = encode_header(frame.type, len(frame.payload), frame.flags)
        view = memoryview(frame.payload)
        await self._write_piece(header + view[:first])
        for start in range(first, len(view), size):
            await self._write_piece(view[start : start + size])

    async def _write_piece(self, piece: bytes | memoryview) -> None:
        try:
            self._writer.write(piece)
            await self._writer.drain()
        except OSError as exc:
            raise LinkClosedError(
                f"link write failed with {type(exc).__name__}; reconnect and resend."
            ) from exc

    # Messages.

    async def send_job(self, header: JobHeader, body: BodySource) -> BodyEnd:
        """JOB, then the body in BODY frames, then END."""
        await self.write_frame(header.to_frame())
        return await self.send_body(header.job_id, body, expected_size=header.body_size)

    async def send_result(self, header: ResultHeader, body: BodySource) -> BodyEnd:
        """RESULT, then the sealed prediction in BODY frames, then END."""
        await self.write_frame(header.to_frame())
        return await self.send_body(header.job_id, body, expected_size=header.body_size)

    async def send_error(self, info: ErrorInfo) -> None:
        await self.write_frame(info.to_frame())

    async def cancel(self, job_id: str) -> None:
        await self.write_frame(Cancel(check_job_id(job_id)).to_frame())

    async def ping(self, *, timeout: float | None = None) -> float:  # noqa: ASYNC109
        """Round-trip time in seconds; only on a link with no job in flight."""
        token = secrets.randbits(64)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.write_frame(Ping(token).to_frame())
        frame = await self.read_frame(timeout=timeout)
        if frame.type is not FrameType.PONG or Ping.from_frame(frame).token != token:
            self._abandon("unexpected answer to PING")
            raise ProtocolError(f"expected the PONG to our PING, got {frame!r}.")
        return loop.time() - started

    # Bodies.

    async def send_body(
        self, job_id: str, body: BodySource, *, expected_size: int | None = None
    ) -> BodyEnd:
        """Streams ``body`` as BODY frames and an END; returns what END carried.

        If the source fails, or yields more or fewer bytes than ``expected_size``,
        the body ends with CANCEL and the error propagates; the link stays open.
        An asyncio cancellation closes the link instead.
        """
        check_job_id(job_id)
        hasher, count = hashlib.sha256(), 0
        source = _chunks(body)
        while (chunk := await self._next_chunk(job_id, source)) is not None:
            count += len(chunk)
            if expected_size is not None and count > expected_size:
                await self._cancel_quietly(job_id)
                raise InternalError(
                    f"body of job {job_id!r} grew past its announced "
                    f"{expected_size} bytes; announce the true size."
                )
            hasher.update(chunk)
            for start in range(0, len(chunk), self.send_limit):
                piece = chunk[start : start + self.send_limit]
                await self.write_frame(Frame(FrameType.BODY, piece))
        if expected_size is not None and count != expected_size:
            await self._cancel_quietly(job_id)
            raise InternalError(
                f"body of job {job_id!r} ended at {count} of its announced "
                f"{expected_size} bytes; announce the true size."
            )
        end = BodyEnd(count, hasher.digest())
        await self.write_frame(end.to_frame())
        return end

    async def _next_chunk(
        self, job_id: str, source: AsyncIterator[bytes]
    ) -> bytes | None:
        try:
            return await anext(source)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            self._abandon("cancelled mid-body")
            raise
        except Exception:
            await self._cancel_quietly(job_id)
            raise

    async def _cancel_quietly(self, job_id: str) -> None:
        # The caller is already raising; a dead link needs no CANCEL.
        with contextlib.suppress(ObscuraError):
            await self.cancel(job_id)

    async def receive_body(
        self,
        *,
        expected_size: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncGenerator[bytes, None]:
        """Yields the payload of each BODY frame, then checks END's count and hash.

        Raises ``JobCancelledError`` on CANCEL and ``PeerError`` on ERROR, both of
        which leave the link open. Stopping early closes the link.
        """
        hasher, count, clean = hashlib.sha256(), 0, False
        try:
            while True:
                frame = await self.read_frame(timeout=timeout)
                if frame.type is not FrameType.BODY:
                    break
                count += len(frame.payload)
                if expected_size is not None and count > expected_size:
                    raise BodyMismatchError(
                        f"body grew past its announced {expected_size} bytes; "
                        "the sender is out of step."
                    )
                hasher.update(frame.payload)
                yield frame.payload
            try:
                _finish_body(frame, count, hasher.digest(), expected_size)
            except (JobCancelledError, PeerError):
                clean = True
                raise
            clean = True
        finally:
            if not clean:
                self._abandon("body not read to its END")

    async def read_body(
        self,
        *,
        expected_size: int,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes:
        """The whole body in memory; for small bodies such as sealed predictions."""
        pieces = self.receive_body(expected_size=expected_size, timeout=timeout)
        return b"".join([piece async for piece in pieces])


def _finish_body(
    frame: Frame, count: int, digest: bytes, expected_size: int | None
) -> None:
    if frame.type is FrameType.CANCEL:
        job_id = Cancel.from_frame(frame).job_id
        raise JobCancelledError(
            f"sender cancelled job {job_id!r} after {count} body bytes.", job_id=job_id
        )
    if frame.type is FrameType.ERROR:
        raise ErrorInfo.from_frame(frame).to_exception()
    end = BodyEnd.from_frame(frame)
    if end.byte_count != count or (expected_size not in (None, count)):
        raise BodyMismatchError(
            f"END says {end.byte_count} bytes, received {count}, announced "
            f"{expected_size}; the stream lost or gained data."
        )
    if end.sha256 != digest:
        raise BodyMismatchError(
            f"body of {count} bytes does not match the SHA-256 in its END; "
            "the stream was corrupted, resend on a fresh connection."
        )


# Handshake.


async def client_hello(
    reader: ByteReader,
    writer: ByteWriter,
    *,
    role: Role,
    limits: LinkLimits | None = None,
) -> Link:
    """Opens the link from the connecting side: HELLO out, HELLO_ACK back."""
    link = Link(reader, writer, limits=limits)
    seconds = link.limits.handshake_timeout
    try:
        hello = Hello(role, link.limits.max_frame_size)
        await link.write_frame(hello.to_frame(), timeout=seconds)
        frame = await link.read_frame(timeout=seconds)
        if frame.type is FrameType.ERROR:
            raise ErrorInfo.from_frame(frame).to_exception()
        if frame.type is not FrameType.HELLO_ACK:
            raise ProtocolError(f"expected HELLO_ACK, got {frame!r}.")
        _accept_peer(link, Hello.from_frame(frame), role)
    except BaseException as exc:
        link._abandon(f"handshake failed: {type(exc).__name__}")
        raise
    return link


async def server_hello(
    reader: ByteReader,
    writer: ByteWriter,
    *,
    role: Role,
    limits: LinkLimits | None = None,
) -> Link:
    """Accepts the link on the listening side; refuses a bad HELLO with ERROR."""
    link = Link(reader, writer, limits=limits)
    seconds = link.limits.handshake_timeout
    try:
        frame = await link.read_frame(timeout=seconds)
        try:
            if frame.type is not FrameType.HELLO:
                raise ProtocolError(f"expected HELLO, got {frame!r}.")
            _accept_peer(link, Hello.from_frame(frame), role)
        except ProtocolError as exc:
            await _refuse(link, exc)
            raise
        hello = Hello(role, link.limits.max_frame_size)
        await link.write_frame(hello.to_frame(FrameType.HELLO_ACK), timeout=seconds)
    except BaseException as exc:
        link._abandon(f"handshake failed: {type(exc).__name__}")
        raise
    return link


def _accept_peer(link: Link, peer: Hello, role: Role) -> None:
    if peer.role is role:
        raise ProtocolError(
            f"both ends of the link claim role {role.name}; one end must be the "
            "proxy and the other the worker."
        )
    link.peer = peer
    log.debug(
        "link_open",
        peer_role=peer.role.name.lower(),
        version=peer.version,
        peer_max_frame_size=peer.max_frame_size,
    )


async def _refuse(link: Link, exc: ProtocolError) -> None:
    info = ErrorInfo(Reason.INVALID_REQUEST, str(exc), retryable=False)
    with contextlib.suppress(LinkError, ProtocolError):
        await link.write_frame(info.to_frame())
