"""Decide what an upload is from its first bytes, never from its declared type.

The gateway calls ``sniff`` on the head of a stream before a job exists; the enclave
worker calls it again on the unsealed bytes before decoding. Pass at least the first
``HEAD_BYTES`` (4 KiB): 33 bytes settle a PNG, 132 a DICOM Part 10 file and 8 a bare
DICOM dataset, the rest is headroom so callers need not care which.
"""

from __future__ import annotations

import struct
from enum import StrEnum

from shared.errors import UnsupportedImageError

HEAD_BYTES = 4096
"""How much of an upload callers should hand to ``sniff``."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD = len(PNG_SIGNATURE) + 8 + 13 + 4  # signature, IHDR length+type, data, CRC
_DICOM_PREAMBLE = 128
_DICOM_PREFIX = b"DICM"

# Every two-letter value representation of PS3.5 section 6.2.
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
    b"TM UC UI UL UN UR US UT UV".split()
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MAX_PLAUSIBLE_HEADER_VALUE = 1024  # the first group 0002/0008 values are short

_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 file"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip stream"),
)

ACCEPTED = "PNG or DICOM (Part 10 file or bare dataset)"


class ImageKind(StrEnum):
    """What the content is; the value doubles as ``DecodedImage.source``."""

    PNG = "png"
    DICOM_FILE = "dicom"
    DICOM_DATASET = "dicom-dataset"


def sniff(head: bytes) -> ImageKind:
    """Classify an upload by its first bytes, or refuse it naming what was seen."""
    if head.startswith(PNG_SIGNATURE):
        _require_ihdr(head)
        return ImageKind.PNG
    if head[_DICOM_PREAMBLE : _DICOM_PREAMBLE + 4] == _DICOM_PREFIX:
        return ImageKind.DICOM_FILE
    if _looks_like_bare_dataset(head):
        return ImageKind.DICOM_DATASET
    raise UnsupportedImageError(
        f"upload is {describe(head)}, not an accepted image; send {ACCEPTED}"
    )


def describe(head: bytes) -> str:
    """Name the content for an error message without echoing more than 8 bytes."""
    if not head:
        return "empty"
    for magic, name in _KNOWN_OTHERS:
        if head.startswith(magic):
            return name
    return f"unrecognised content starting {head[:8].hex(' ')}"


def _require_ihdr(head: bytes) -> None:
    # PNG requires IHDR to be the first chunk and exactly 13 bytes long.
    if len(head) < _PNG_HEAD:
        raise UnsupportedImageError(
            f"PNG upload is only {len(head)} bytes, too short for its IHDR chunk; "
            "send the complete file"
        )
    length, chunk_type = struct.unpack(">I4s", head[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise UnsupportedImageError(
            f"PNG upload starts with chunk {chunk_type!r} of {length} bytes instead "
            "of a 13-byte IHDR; send a well-formed PNG"
        )


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset without preamble opens with a group 0002 or 0008 element."""
    if len(head) < 8:
        return False
    group, _element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008):
        return False
    if head[4:6] in _EXPLICIT_VRS:
        return True
    length: int = struct.unpack("<I", head[4:8])[0]
    # Implicit VR: a 32-bit length follows the tag; it must be even and small.
    return length == _UNDEFINED_LENGTH or (
        length % 2 == 0 and length <= _MAX_PLAUSIBLE_HEADER_VALUE
    )
