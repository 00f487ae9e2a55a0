"""PNG inspection (gateway, header only) and decoding (enclave worker).

Accepted: non-interlaced or Adam7-interlaced grayscale at 8 or 16 bits. Sixteen-bit
samples are returned unchanged. Eight-bit samples are widened by ``v * 257``, which
maps 0..255 exactly onto 0..65535 (255 * 257 == 65535) so that both depths share
one scale. Colour (RGB, RGBA, palette) is refused even when every channel is equal:
a colour mammogram means a screenshot or a converted file, not detector data.
Grayscale with alpha and grayscale below 8 bits are refused too.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import cast

import numpy as np
from isal import isal_zlib
from PIL import Image

from shared.errors import UnsupportedImageError
from shared.imaging.decode import MAX_PIXELS, DecodedImage
from shared.imaging.sniff import ImageKind, sniff

# Bit depths the PNG specification allows for each colour type (section 11.2.2).
_VALID_DEPTHS: dict[int, frozenset[int]] = {
    0: frozenset({1, 2, 4, 8, 16}),
    2: frozenset({8, 16}),
    3: frozenset({1, 2, 4, 8}),
    4: frozenset({8, 16}),
    6: frozenset({8, 16}),
}
_COLOUR_NAMES = {
    0: "grayscale",
    2: "RGB",
    3: "palette",
    4: "grayscale with alpha",
    6: "RGBA",
}
_ACCEPTED = "send 8-bit or 16-bit single-channel grayscale"
_MAX_SIDE = 2**31 - 1  # the specification's limit for width and height


@dataclass(frozen=True)
class PngInfo:
    """The IHDR fields, validated and accepted."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool


def inspect_png(head: bytes) -> PngInfo:
    """Validate the IHDR in the first 33 bytes or more; decode nothing."""
    if sniff(head) is not ImageKind.PNG:
        raise UnsupportedImageError("upload is not a PNG; send a PNG file")
    fields = head[16:29]
    (crc,) = struct.unpack(">I", head[29:33])
    if zlib.crc32(b"IHDR" + fields) != crc:
        raise UnsupportedImageError(
            "PNG IHDR chunk fails its CRC check; the file is corrupt, send it again"
        )
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", fields
    )
    _check_structure(width, height, depth, colour, compression, filtering, interlace)
    _check_size(width, height)
    _check_supported(depth, colour)
    return PngInfo(width, height, depth, colour, interlace == 1)


def decode_png(data: bytes) -> DecodedImage:
    """Decode an accepted PNG to (height, width) uint16 on the 16-bit scale."""
    info = inspect_png(data[:64])
    samples = _unfiltered_16bit(data, info)
    if samples is None:
        samples = _decode_samples(data)
    if samples.shape != (info.height, info.width):
        raise UnsupportedImageError(
            f"PNG decoded to shape {samples.shape}, expected "
            f"{(info.height, info.width)}; send a well-formed PNG"
        )
    if info.bit_depth == 8:
        pixels = samples.astype(np.uint16) * np.uint16(257)
    else:
        pixels = np.ascontiguousarray(samples, dtype=np.uint16)
    return DecodedImage(pixels, ImageKind.PNG.value, info.bit_depth, None)


def _check_structure(
    width: int,
    height: int,
    depth: int,
    colour: int,
    compression: int,
    filtering: int,
    interlace: int,
) -> None:
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise UnsupportedImageError(
            f"PNG IHDR declares {width}x{height} pixels, which the PNG "
            "specification forbids; send a well-formed PNG"
        )
    if depth not in _VALID_DEPTHS.get(colour, frozenset()):
        raise UnsupportedImageError(
            f"PNG IHDR declares colour type {colour} at bit depth {depth}, an "
            "invalid combination; send a well-formed PNG"
        )
    if (compression, filtering) != (0, 0) or interlace not in (0, 1):
        raise UnsupportedImageError(
            f"PNG IHDR declares compression {compression}, filter method "
            f"{filtering}, interlace {interlace}; only 0, 0 and 0 or 1 exist"
        )


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise UnsupportedImageError(
            f"PNG declares {width}x{height} pixels, above the limit of "
            f"{MAX_PIXELS:,} pixels; send a mammogram at detector resolution"
        )


def _check_supported(depth: int, colour: int) -> None:
    if colour != 0:
        raise UnsupportedImageError(
            f"PNG is {_COLOUR_NAMES[colour]} at {depth} bits, which is not "
            f"accepted; {_ACCEPTED}"
        )
    if depth not in (8, 16):
        raise UnsupportedImageError(
            f"PNG is {depth}-bit grayscale, too coarse for mammography; {_ACCEPTED}"
        )


# isal's stubs declare its error as an instance; at run time it is a class.
_INFLATE_ERRORS: tuple[type[Exception], ...] = (
    cast(type[Exception], isal_zlib.error),
    zlib.error,
)
_SIGNATURE_SIZE = 8
_CHUNK_HEAD = struct.Struct(">I4s")
_CRC = struct.Struct(">I")


def _idat(data: bytes) -> bytes | None:
    """The concatenated IDAT payloads, or None if any chunk is cut or fails its CRC."""
    parts, offset = [], _SIGNATURE_SIZE
    while offset + 12 <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, offset)
        end = offset + 8 + length
        if end + 4 > len(data):
            return None
        body = data[offset + 8 : end]
        if zlib.crc32(kind + body) != _CRC.unpack_from(data, end)[0]:
            return None
        if kind == b"IDAT":
            parts.append(body)
        elif kind == b"IEND":
            return b"".join(parts)
        offset = end + 4
    return None


def _unfiltered_16bit(data: bytes, info: PngInfo) -> np.ndarray | None:
    """The fast path for what detectors write: 16-bit gray, no filter on any row.

    ISA-L inflates the image data three times faster than zlib, and unfiltered rows
    are just big-endian samples. Anything else (another depth, interlace, a
    filtered row, a chunk cut short or failing its CRC, data of the wrong length)
    returns None and goes through Pillow, which decides.
    """
    if info.bit_depth != 16 or info.interlaced:
        return None
    stride = 1 + 2 * info.width
    expected = stride * info.height
    compressed = _idat(data)
    if compressed is None:
        return None
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, expected + 1)
    except _INFLATE_ERRORS:
        return None
    if len(raw) != expected or not inflater.eof:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(info.height, stride)
    if rows[:, 0].any():
        return None
    return rows[:, 1:].view(">u2").astype(np.uint16)


def _decode_samples(data: bytes) -> np.ndarray:
    """Let Pillow inflate and unfilter; it keeps 16-bit samples exact as I;16."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            # Pillow 10+ gives "I;16" for 16-bit grayscale, older ones gave "I".
            if image.mode not in ("L", "I;16", "I"):
                raise UnsupportedImageError(
                    f"PNG decoded to Pillow mode {image.mode!r}; {_ACCEPTED}"
                )
            samples = np.asarray(image)
    except UnsupportedImageError:
        raise
    except (OSError, SyntaxError, ValueError, zlib.error, EOFError) as exc:
        raise UnsupportedImageError(
            f"PNG pixel data could not be decoded ({type(exc).__name__}); the file "
            "is truncated or corrupt, send it again"
        ) from exc
    if samples.dtype == np.int32 and (samples.min() < 0 or samples.max() > 65535):
        raise UnsupportedImageError("PNG decoded outside 0..65535; send it again")
    return samples
