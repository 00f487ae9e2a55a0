"""Validate a DICOM upload from a bounded prefix of its bytes.

``shared.imaging.inspect_dicom`` wants a seekable file; the gateway has only the
first ``dicom_header_bytes`` of a stream. When the whole upload fits, it is
inspected exactly. Otherwise:

- native (uncompressed) pixel data: the prefix is presented as a file whose end is
  far away, so pydicom skips the deferred Pixel Data value using the length in its
  element header; the pixel-module checks and the rows x columns x bits length
  check then run on that declared length, and the offset where the value ends
  becomes ``min_size``, which ``Upload.body`` enforces once the stream has ended;
- encapsulated (compressed) pixel data of undefined length: the prefix is cut
  after the Pixel Data element header and closed with an empty offset table and
  a sequence delimiter, so the header checks run; the fragments themselves are
  checked by the enclave's decoder.

A header longer than the prefix, or a deflated dataset that does not fit in it,
reads as one without Pixel Data and is refused with a 422.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from services.gateway.errors import ApiError
from shared.errors import UnsupportedImageError
from shared.imaging import inspect_dicom

# (7FE0,0010) OB, reserved, undefined length: encapsulated Pixel Data (PS3.5 A.4).
_ENCAPSULATED_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_EMPTY_OFFSET_TABLE = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_FAR_END = 1 << 40


@dataclass(frozen=True)
class DicomCheck:
    view: str | None
    min_size: int


class _PrefixFile(io.RawIOBase):
    """The prefix as a seekable file that claims to go on to ``_FAR_END``.

    Reads past the prefix return nothing; ``furthest`` records how far the parser
    read or skipped, which is where the deferred Pixel Data value ends.
    """

    def __init__(self, prefix: bytes) -> None:
        super().__init__()
        self._prefix = prefix
        self._position = 0
        self.furthest = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            self._position = _FAR_END + offset
            return self._position
        base = self._position if whence == io.SEEK_CUR else 0
        self._position = base + offset
        self.furthest = max(self.furthest, self._position)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._prefix[self._position : self._position + len(buffer)]
        buffer[: len(data)] = data
        self._position += len(data)
        self.furthest = max(self.furthest, self._position)
        return len(data)


def invalid_dicom(message: str) -> ApiError:
    return ApiError(422, "invalid_dicom", message)


def check_dicom(prefix: bytes, *, complete: bool) -> DicomCheck:
    """Validate the header; ``complete`` says the prefix is the whole upload."""
    try:
        if complete:
            return DicomCheck(inspect_dicom(prefix).view, 0)
        at = prefix.find(_ENCAPSULATED_PIXEL_DATA)
        if at >= 0:
            closed = (
                prefix[: at + len(_ENCAPSULATED_PIXEL_DATA)]
                + _EMPTY_OFFSET_TABLE
                + _SEQUENCE_DELIMITER
            )
            return DicomCheck(inspect_dicom(closed).view, 0)
        file = _PrefixFile(prefix)
        info = inspect_dicom(file)  # type: ignore[arg-type]
    except UnsupportedImageError as exc:
        raise invalid_dicom(str(exc)) from exc
    return DicomCheck(info.view, file.furthest)
