"""The link over real loopback TCP and over in-memory streams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from shared.errors import InternalError, Reason
from shared.link.frames import (
    MIN_MAX_FRAME_SIZE,
    BodyEnd,
    BodyMismatchError,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameTooLargeError,
    FrameType,
    Hello,
    JobCancelledError,
    JobHeader,
    LinkClosedError,
    LinkTimeoutError,
    PeerError,
    ProtocolError,
    ResultHeader,
    Role,
    VersionMismatchError,
    encode_frame,
    encode_header,
)
from shared.link.stream import (
    MAX_WRITE_PIECE,
    ByteWriter,
    Link,
    LinkLimits,
    client_hello,
    server_hello,
)
from shared.link.transport import TcpTransport

pytestmark = pytest.mark.timeout(60)

KIB = 1024
MIB = 1024 * KIB
SEALED_CHUNK = MIB + 16


class RecordingWriter:
    """Records the size of every write; forwards to a real writer if given one."""

    def __init__(self, inner: ByteWriter | None = None) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sizes.append(len(data))
        if self.inner is None:
            self.data += data
        else:
            self.inner.write(data)

    async def drain(self) -> None:
        if self.inner is not None:
            await self.inner.drain()

    def close(self) -> None:
        self.closed = True
        if self.inner is not None:
            self.inner.close()

    async def wait_closed(self) -> None:
        if self.inner is not None:
            await self.inner.wait_closed()


class StalledWriter(RecordingWriter):
    """A peer that never reads: drain() never returns."""

    async def drain(self) -> None:
        await asyncio.Event().wait()


Streams = tuple[asyncio.StreamReader, RecordingWriter]
Pair = tuple[Link, Link, RecordingWriter, RecordingWriter]


@contextlib.asynccontextmanager
async def tcp_streams() -> AsyncIterator[tuple[Streams, Streams]]:
    """Both ends of one 127.0.0.1 connection, writers wrapped to record writes."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    accepted = asyncio.Queue()
    done = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))
        await done.wait()

    server = await TcpTransport("127.0.0.1", 0).serve(handler)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await TcpTransport("127.0.0.1", port).connect()
    server_reader, server_writer = await accepted.get()
    try:
        yield (
            (reader, RecordingWriter(writer)),
            (server_reader, RecordingWriter(server_writer)),
        )
    finally:
        writer.close()
        server_writer.close()
        done.set()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def tcp_pair(*, limits: LinkLimits | None = None) -> AsyncIterator[Pair]:
    """A handshaken proxy link and worker link over 127.0.0.1, port 0."""
    async with tcp_streams() as ((reader, out), (server_reader, server_out)):
        proxy, worker = await asyncio.gather(
            client_hello(reader, out, role=Role.PROXY, limits=limits),
            server_hello(server_reader, server_out, role=Role.WORKER, limits=limits),
        )
        yield proxy, worker, out, server_out


def memory_link(incoming: bytes, *, eof: bool = True) -> tuple[Link, RecordingWriter]:
    reader = asyncio.StreamReader()
    reader.feed_data(incoming)
    if eof:
        reader.feed_eof()
    writer = RecordingWriter()
    link = Link(reader, writer)
    link.peer = Hello(Role.WORKER)
    return link, writer


async def receive_all(link: Link, expected_size: int) -> tuple[int, bytes]:
    hasher, count = hashlib.sha256(), 0
    async for piece in link.receive_body(expected_size=expected_size):
        hasher.update(piece)
        count += len(piece)
    return count, hasher.digest()


async def receive_job(link: Link) -> tuple[JobHeader, int, bytes]:
    header = JobHeader.from_frame(await link.read_frame())
    return (header, *await receive_all(link, header.body_size))


def chunked(data: bytes, size: int = SEALED_CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    "size", [0, 1, 32 * KIB - 1, 32 * KIB, 32 * KIB + 1, 2 * MIB + 17]
)
async def test_link_body_of_any_size_arrives_exactly_over_tcp(size: int) -> None:
    body = os.urandom(size)
    async with tcp_pair() as (proxy, worker, proxy_out, _):
        header = JobHeader("job-size", size, nonce=b"n" * 16)
        sent, received = await asyncio.gather(
            proxy.send_job(header, chunked(body)), receive_job(worker)
        )
    assert received == (header, size, hashlib.sha256(body).digest())
    assert sent == BodyEnd.of(body)
    assert max(proxy_out.sizes) <= MAX_WRITE_PIECE


async def test_link_64_mib_body_over_tcp_reports_throughput() -> None:
    body = os.urandom(64 * MIB)
    async with tcp_pair() as (proxy, worker, proxy_out, _):
        header = JobHeader("job-big", len(body))
        started = time.perf_counter()
        _, received = await asyncio.gather(
            proxy.send_job(header, chunked(body)), receive_job(worker)
        )
        elapsed = time.perf_counter() - started
    assert received == (header, len(body), hashlib.sha256(body).digest())
    assert max(proxy_out.sizes) <= MAX_WRITE_PIECE
    print(f"64 MiB over TCP loopback: {64 / elapsed:.0f} MiB/s ({elapsed:.2f} s)")


async def test_link_writes_never_exceed_32_kib_per_call() -> None:
    link, writer = memory_link(b"")
    body = os.urandom(3 * MIB + 5)
    await link.send_body("job-w", [body[:SEALED_CHUNK], body[SEALED_CHUNK:]])
    assert max(writer.sizes) == MAX_WRITE_PIECE
    frames = FrameDecoder().feed(bytes(writer.data))
    assert b"".join(f.payload for f in frames[:-1]) == body
    assert BodyEnd.from_frame(frames[-1]) == BodyEnd.of(body)


async def test_link_oversized_length_refused_before_payload_arrives() -> None:
    link, _ = memory_link(encode_header(FrameType.BODY, 64 * MIB), eof=False)
    with pytest.raises(FrameTooLargeError, match=str(64 * MIB)):
        await link.read_frame(timeout=5)
    assert link.closed


@pytest.mark.parametrize("cut", [3, 6 + 2])
async def test_link_close_inside_a_frame_raises_never_a_short_frame(cut: int) -> None:
    data = encode_frame(Frame(FrameType.BODY, b"payload!"))
    link, _ = memory_link(data[:cut])
    with pytest.raises(LinkClosedError) as info:
        await link.read_frame()
    assert info.value.mid_frame and info.value.retryable
    assert link.closed


async def test_link_close_mid_payload_over_tcp_raises_link_closed() -> None:
    async with tcp_pair() as (proxy, worker, proxy_out, _):
        assert proxy_out.inner is not None
        proxy_out.inner.write(encode_header(FrameType.BODY, 100) + b"x" * 40)
        await proxy.close()
        with pytest.raises(LinkClosedError, match="after 46 of its bytes"):
            await worker.read_frame()


async def test_link_clean_close_between_frames_is_not_mid_frame() -> None:
    link, _ = memory_link(encode_frame(Frame(FrameType.PONG, b"\0" * 8)))
    assert (await link.read_frame()).type is FrameType.PONG
    with pytest.raises(LinkClosedError, match="between frames") as info:
        await link.read_frame()
    assert not info.value.mid_frame
    with pytest.raises(LinkClosedError, match="link is closed"):
        await link.read_frame()


async def test_handshake_unknown_version_refused_with_error_frame() -> None:
    done = asyncio.Event()
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await server_hello(r, w, role=Role.WORKER)
        except VersionMismatchError as exc:
            outcome.set_result(exc)
        await done.wait()

    server = await TcpTransport("127.0.0.1", 0).serve(handler)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await TcpTransport("127.0.0.1", port).connect()
    writer.write(encode_frame(Hello(Role.PROXY, version=2).to_frame()))
    refusal = FrameDecoder().feed(await reader.read(4096))
    done.set()
    writer.close()
    server.close()
    await server.wait_closed()

    info = ErrorInfo.from_frame(refusal[0])
    assert info.reason is Reason.INVALID_REQUEST and not info.retryable
    assert "version 2 is not supported" in info.message
    assert "version 2" in str(await outcome)


async def test_handshake_ack_with_unknown_version_refused_by_client() -> None:
    ack = Hello(Role.WORKER, version=3).to_frame(FrameType.HELLO_ACK)
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame(ack))
    writer = RecordingWriter()
    with pytest.raises(VersionMismatchError, match="version 3"):
        await client_hello(reader, writer, role=Role.PROXY)
    assert writer.closed


async def test_handshake_same_role_on_both_ends_refused() -> None:
    async with tcp_streams() as ((reader, out), (server_reader, server_out)):
        client, server = await asyncio.gather(
            client_hello(reader, out, role=Role.WORKER),
            server_hello(server_reader, server_out, role=Role.WORKER),
            return_exceptions=True,
        )
    assert isinstance(server, ProtocolError)
    assert isinstance(client, PeerError) and not client.retryable
    assert "both ends of the link claim role WORKER" in str(client)
    assert out.closed and server_out.closed


async def test_handshake_exchanges_max_frame_sizes() -> None:
    limits = LinkLimits(max_frame_size=MIN_MAX_FRAME_SIZE)
    async with tcp_pair(limits=limits) as (proxy, worker, _, _):
        assert proxy.send_limit == worker.send_limit == MIN_MAX_FRAME_SIZE
        assert proxy.peer is not None and proxy.peer.role is Role.WORKER


async def test_link_read_timeout_between_frames_keeps_link_open() -> None:
    async with tcp_pair() as (proxy, worker, _, _):
        with pytest.raises(LinkTimeoutError) as info:
            await worker.read_frame(timeout=0.1)
        assert info.value.retryable and info.value.reason is Reason.TIMEOUT
        assert not worker.closed
        await proxy.cancel("job-late")
        assert (await worker.read_frame()).type is FrameType.CANCEL


async def test_link_stalled_peer_mid_body_times_out_and_closes() -> None:
    async with tcp_pair() as (proxy, worker, _, _):
        await proxy.write_frame(JobHeader("job-stall", 10).to_frame())
        await proxy.write_frame(Frame(FrameType.BODY, b"12345"))
        assert (await worker.read_frame()).type is FrameType.JOB
        with pytest.raises(LinkTimeoutError, match="reading a frame"):
            await receive_all_with_timeout(worker, 0.2)
        assert worker.closed


async def receive_all_with_timeout(link: Link, seconds: float) -> None:
    async for _ in link.receive_body(expected_size=10, timeout=seconds):
        pass


async def test_link_stalled_writer_times_out_and_closes() -> None:
    link = Link(asyncio.StreamReader(), StalledWriter())
    with pytest.raises(LinkTimeoutError, match="writing a BODY frame"):
        await link.write_frame(Frame(FrameType.BODY, b"x"), timeout=0.1)
    assert link.closed


async def test_link_frame_above_peer_maximum_refused_before_writing() -> None:
    link, writer = memory_link(b"")
    link.peer = Hello(Role.WORKER, MIN_MAX_FRAME_SIZE)
    with pytest.raises(FrameTooLargeError, match="peer's 65536-byte maximum"):
        await link.write_frame(Frame(FrameType.RESULT, b"r" * (MIN_MAX_FRAME_SIZE + 1)))
    assert writer.sizes == [] and not link.closed


async def test_link_asyncio_cancellation_mid_body_closes_both_ends() -> None:
    stuck = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b"a" * 100
        await stuck.wait()
        yield b"never"

    async with tcp_pair() as (proxy, worker, _, _):
        task = asyncio.create_task(proxy.send_job(JobHeader("job-c", 200), source()))
        assert (await worker.read_frame()).type is FrameType.JOB
        body = worker.receive_body(expected_size=200)
        assert await anext(body) == b"a" * 100
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert proxy.closed
        with pytest.raises(LinkClosedError):
            await anext(body)
        assert worker.closed


async def test_link_receiver_cancelled_mid_body_closes() -> None:
    async with tcp_pair() as (proxy, worker, _, _):
        await proxy.write_frame(Frame(FrameType.BODY, b"part"))
        task = asyncio.create_task(receive_all(worker, 100))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert worker.closed


async def test_link_source_failure_sends_cancel_and_link_stays_usable() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"b" * 10
        raise RuntimeError("S3 read failed")

    async with tcp_pair() as (proxy, worker, _, _):
        with pytest.raises(RuntimeError, match="S3 read failed"):
            await proxy.send_job(JobHeader("job-f", 20), failing())
        assert (await worker.read_frame()).type is FrameType.JOB
        with pytest.raises(JobCancelledError) as info:
            await receive_all(worker, 20)
        assert info.value.job_id == "job-f"
        assert not proxy.closed and not worker.closed

        await proxy.send_job(JobHeader("job-g", 3), [b"abc"])
        assert JobHeader.from_frame(await worker.read_frame()).job_id == "job-g"
        assert await worker.read_body(expected_size=3) == b"abc"


@pytest.mark.parametrize(("announced", "chunks"), [(5, [b"abc"]), (2, [b"abc"])])
async def test_link_body_not_matching_announced_size_is_cancelled(
    announced: int, chunks: list[bytes]
) -> None:
    async with tcp_pair() as (proxy, worker, _, _):
        with pytest.raises(InternalError, match=f"announced {announced} bytes"):
            await proxy.send_job(JobHeader("job-s", announced), chunks)
        await worker.read_frame()
        with pytest.raises(JobCancelledError):
            await receive_all(worker, announced)


@pytest.mark.parametrize(
    ("end", "message"),
    [
        (BodyEnd(3, hashlib.sha256(b"abd").digest()), "does not match the SHA-256"),
        (BodyEnd(4, hashlib.sha256(b"abc").digest()), "END says 4 bytes"),
    ],
)
async def test_link_end_disagreeing_with_body_is_refused(
    end: BodyEnd, message: str
) -> None:
    stream = encode_frame(Frame(FrameType.BODY, b"abc")) + encode_frame(end.to_frame())
    link, _ = memory_link(stream)
    with pytest.raises(BodyMismatchError, match=message):
        await link.read_body(expected_size=3)
    assert link.closed


async def test_link_body_longer_than_announced_is_refused() -> None:
    link, _ = memory_link(encode_frame(Frame(FrameType.BODY, b"abcd")))
    with pytest.raises(BodyMismatchError, match="announced 3 bytes"):
        await link.read_body(expected_size=3)


async def test_link_error_frame_mid_body_raises_peer_error_and_keeps_link() -> None:
    info = ErrorInfo(Reason.MODEL_UNAVAILABLE, "model locked", retryable=True)
    link, _ = memory_link(encode_frame(info.to_frame()), eof=False)
    with pytest.raises(PeerError, match="model locked") as caught:
        await link.read_body(expected_size=1)
    assert caught.value.retryable and caught.value.reason is Reason.MODEL_UNAVAILABLE
    assert not link.closed


async def test_link_unexpected_frame_mid_body_is_a_protocol_error() -> None:
    link, _ = memory_link(encode_frame(JobHeader("j", 1).to_frame()))
    with pytest.raises(ProtocolError, match="expected a END frame, got JOB"):
        await link.read_body(expected_size=1)
    assert link.closed


async def test_link_consumer_stopping_early_closes_link() -> None:
    body = [Frame(FrameType.BODY, b"1"), Frame(FrameType.BODY, b"2")]
    link, _ = memory_link(b"".join(map(encode_frame, body)), eof=False)
    async with contextlib.aclosing(link.receive_body()) as pieces:
        async for _ in pieces:
            break
    assert link.closed


async def test_link_ping_is_answered_by_a_reading_peer() -> None:
    async with tcp_pair() as (proxy, worker, _, _):
        reading = asyncio.create_task(worker.read_frame())
        rtt = await proxy.ping(timeout=5)
        await proxy.send_result(ResultHeader("job-r", 0, receipt=b"doc"), [])
        frame = await reading
    assert 0 < rtt < 5
    assert ResultHeader.from_frame(frame).receipt == b"doc"
