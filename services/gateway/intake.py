"""Read an upload as a stream: form fields first, then the image, never whole.

A job arrives as ``multipart/form-data`` (fields ``view``, ``model``,
``priority``, ``external_ref``, then the ``file`` part) or as a raw body with the
fields as query parameters. Form fields must come before the file part: the file
is streamed on as it arrives, so a field after it could only be read by holding
the file. A part after the file is refused (422), which aborts the upload.

Only a bounded prefix is held for validation: ``HEAD_BYTES`` to sniff the type and
check a PNG header, up to ``dicom_header_bytes`` for a DICOM header. Everything
else passes through ``Upload.body``, which counts bytes actually read (chunked
bodies and wrong Content-Length included) against the cap.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.gateway.dicom_prefix import DicomCheck, check_dicom
from services.gateway.errors import ApiError
from shared.errors import UnsupportedImageError
from shared.imaging import HEAD_BYTES, ImageKind, inspect_png, sniff

FIELD_NAMES = frozenset({"view", "model", "priority", "external_ref"})
FILE_FIELD = "file"


@dataclass(frozen=True)
class IntakeLimits:
    max_upload_bytes: int
    dicom_header_bytes: int
    max_form_overhead_bytes: int
    max_parts: int
    max_field_bytes: int
    body_idle_timeout_s: float = 30.0
    min_body_rate_bps: int = 0
    body_rate_grace_s: float = 10.0


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"upload exceeds the limit of {limit} bytes; send a smaller image.",
    )


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


async def counted(source: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass bytes on, refusing the body once more than ``limit`` were read."""
    total = 0
    async for piece in source:
        total += len(piece)
        if total > limit:
            raise too_large(limit)
        if piece:
            yield piece


def too_slow(message: str) -> ApiError:
    return ApiError(408, "request_timeout", message)


async def paced(
    source: AsyncIterator[bytes], limits: IntakeLimits
) -> AsyncIterator[bytes]:
    """Pass bytes on, refusing a body that stalls or trickles (408).

    A body may pause up to ``body_idle_timeout_s`` between chunks; once older than
    ``body_rate_grace_s`` its average rate must reach ``min_body_rate_bps``. Both
    free the connection of a client that sends a byte at a time.
    """
    loop = asyncio.get_running_loop()
    started, total = loop.time(), 0
    while True:
        try:
            async with asyncio.timeout(limits.body_idle_timeout_s):
                piece = await anext(source, None)
        except TimeoutError as exc:
            raise too_slow(
                f"the upload sent nothing for {limits.body_idle_timeout_s} s; send"
                " the body without pauses."
            ) from exc
        if piece is None:
            return
        total += len(piece)
        elapsed = loop.time() - started
        if (
            elapsed > limits.body_rate_grace_s
            and total < limits.min_body_rate_bps * elapsed
        ):
            raise too_slow(
                f"the upload arrives at {total / elapsed:.0f} bytes/s, below the"
                f" minimum of {limits.min_body_rate_bps}; send it faster."
            )
        yield piece


class _Events:
    """Collects what the push parser reports for one written chunk."""

    def __init__(self, limits: IntakeLimits) -> None:
        self.limits = limits
        self.items: list[tuple[str, Any]] = []
        self.parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.items.append(("headers", self.headers)),
            "on_part_data": lambda d, s, e: self.items.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: self.items.append(("end", None)),
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise ApiError(
                413,
                "payload_too_large",
                f"multipart body has more than {self.limits.max_parts} parts;"
                " send the form fields and one file.",
            )
        self.headers = {}

    def _header_end(self) -> None:
        self.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()


class MultipartReader:
    """Turns the request stream into form fields plus the file part's bytes."""

    def __init__(
        self, stream: AsyncIterator[bytes], boundary: bytes, limits: IntakeLimits
    ) -> None:
        self._stream = stream
        self._events = _Events(limits)
        self._parser = MultipartParser(
            boundary, self._events.callbacks(), max_header_count=8
        )
        self._limits = limits
        self.fields: dict[str, str] = {}
        self._current: str | None = None
        self._value = bytearray()
        self._file_started = False
        self._file_done = False

    async def read_fields(self) -> tuple[dict[str, str], list[bytes]]:
        """Read up to the start of the file part; return fields and first bytes."""
        async for chunk in self._stream:
            data = self._feed(chunk)
            if self._file_started:
                return self.fields, data
        self._finish()
        raise invalid(f"multipart body has no {FILE_FIELD!r} part; send the image.")

    async def file_bytes(self, first: list[bytes]) -> AsyncIterator[bytes]:
        for piece in first:
            yield piece
        async for chunk in self._stream:
            for piece in self._feed(chunk):
                yield piece
        self._finish()
        if not self._file_done:
            raise invalid("multipart body ends inside the file part; send it whole.")

    def _feed(self, chunk: bytes) -> list[bytes]:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ApiError(
                400,
                "invalid_request",
                f"multipart body is malformed ({type(exc).__name__}); check the"
                " boundary and part headers.",
            ) from exc
        items, self._events.items = self._events.items, []
        return [piece for piece in map(self._handle, items) if piece]

    def _finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise ApiError(
                400, "invalid_request", "multipart body is cut short."
            ) from exc

    def _handle(self, item: tuple[str, Any]) -> bytes:
        kind, value = item
        if kind == "headers":
            self._begin(value)
        elif kind == "data" and self._current == FILE_FIELD:
            return bytes(value)
        elif kind == "data":
            self._value += value
            if len(self._value) > self._limits.max_field_bytes:
                raise invalid(
                    f"form field {self._current!r} is longer than"
                    f" {self._limits.max_field_bytes} bytes; shorten it."
                )
        elif kind == "end":
            self._end()
        return b""

    def _begin(self, headers: dict[bytes, bytes]) -> None:
        if self._file_done:
            raise invalid(
                "multipart body has a part after the file part; send the form"
                " fields before the file."
            )
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != FILE_FIELD and name not in FIELD_NAMES:
            raise invalid(
                f"unknown form field {name[:40]!r}; send only {sorted(FIELD_NAMES)}"
                f" and {FILE_FIELD!r}."
            )
        if name in self.fields:
            raise invalid(f"form field {name!r} appears twice; send it once.")
        self._current, self._value = name, bytearray()
        self._file_started = name == FILE_FIELD

    def _end(self) -> None:
        if self._current == FILE_FIELD:
            self._file_done = True
        elif self._current is not None:
            self.fields[self._current] = self._value.decode("utf-8", "replace")
        self._current = None


@dataclass
class Upload:
    """A validated upload: what it is, and its bytes, prefix first."""

    kind: ImageKind
    view: str | None
    prefix: bytes = field(repr=False)
    rest: AsyncIterator[bytes] = field(repr=False)
    limit: int
    min_size: int = 0
    size: int = 0
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)

    async def body(self) -> AsyncIterator[bytes]:
        """Yield every byte once, counting and hashing; enforce cap and length."""
        async for piece in self._all():
            self.size += len(piece)
            if self.size > self.limit:
                raise too_large(self.limit)
            self._digest.update(piece)
            yield piece
        if self.size < self.min_size:
            raise ApiError(
                422,
                "invalid_dicom",
                f"DICOM pixel data ends at byte {self.min_size} but the upload has"
                f" only {self.size} bytes; the file is truncated, send it again.",
            )

    def sha256(self) -> str:
        return str(self._digest.hexdigest())

    async def _all(self) -> AsyncIterator[bytes]:
        if self.prefix:
            yield self.prefix
        async for piece in self.rest:
            yield piece


async def _take(source: AsyncIterator[bytes], have: bytearray, wanted: int) -> bool:
    """Extend ``have`` to at least ``wanted`` bytes; False when the source ended."""
    while len(have) < wanted:
        piece = await anext(source, None)
        if piece is None:
            return False
        have += piece
    return True


async def inspect_upload(source: AsyncIterator[bytes], limits: IntakeLimits) -> Upload:
    """Read the prefix, decide the type by content and validate its header.

    Raises 415 for content that is neither PNG nor DICOM, 422 for an image the
    mesh cannot use; no job exists yet when this runs.
    """
    prefix = bytearray()
    more = await _take(source, prefix, HEAD_BYTES)
    head = bytes(prefix[:HEAD_BYTES])
    try:
        kind = sniff(head)
    except UnsupportedImageError as exc:
        raise ApiError(415, "unsupported_media_type", str(exc)) from exc
    upload = Upload(kind, None, b"", source, limits.max_upload_bytes)
    if kind is ImageKind.PNG:
        try:
            inspect_png(head)
        except UnsupportedImageError as exc:
            raise ApiError(422, "unsupported_image", str(exc)) from exc
    else:
        if more:
            more = await _take(source, prefix, limits.dicom_header_bytes)
        if len(prefix) > limits.max_upload_bytes:
            raise too_large(limits.max_upload_bytes)
        check: DicomCheck = check_dicom(bytes(prefix), complete=not more)
        upload.view, upload.min_size = check.view, check.min_size
    upload.prefix = bytes(prefix)
    return upload
