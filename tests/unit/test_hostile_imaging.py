"""Hostile and compressed DICOM at the imaging layer: deflate bombs, and the lossless
codecs decoded against the pixels they were made from.

The JPEG lossless, JPEG-LS and JPEG 2000 streams are encoded with imagecodecs, an
encoder independent of the pylibjpeg decoders the worker uses.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from services.gateway.dicom_prefix import check_dicom
from services.gateway.errors import ApiError
from shared.errors import UnsupportedImageError
from shared.imaging import decode_dicom, inspect_dicom
from shared.imaging.deflate import MAX_INFLATED_BYTES, inflate, read_deflated
from tests.imaging_factories import dicom_bytes, mammogram

imagecodecs = pytest.importorskip("imagecodecs")
pytestmark = pytest.mark.timeout(60)

_PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"


def _pixels(bits: int, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(bits)
    smooth = np.add.outer(np.arange(shape[0]) * 31, np.arange(shape[1]) * 17)
    noisy = smooth + rng.integers(0, 64, shape)
    values = noisy % (1 << bits)
    values.flat[:2] = (0, (1 << bits) - 1)  # the whole range, both ends
    return values.astype(np.uint16)


def _full_scale(stored: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(stored * (65535 / ((1 << bits) - 1))).astype(np.uint16)


def _encapsulated(pixels: np.ndarray, bits: int, frame: bytes, syntax: str) -> bytes:
    dataset = mammogram(pixels, BitsStored=bits, HighBit=bits - 1)
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    return dicom_bytes(dataset, syntax=syntax)


_LOSSLESS: list[tuple[str, str, Callable[[np.ndarray, int], bytes]]] = [
    ("jpeg-ls", JPEGLSLossless, lambda a, _b: imagecodecs.jpegls_encode(a)),
    (
        "jpeg-lossless-sv1",
        JPEGLosslessSV1,
        lambda a, b: imagecodecs.jpeg8_encode(
            a, lossless=True, predictor=1, bitspersample=b
        ),
    ),
    (
        "jpeg-lossless-predictor-6",
        JPEGLossless,
        lambda a, b: imagecodecs.jpeg8_encode(
            a, lossless=True, predictor=6, bitspersample=b
        ),
    ),
    (
        "jpeg-2000-reversible",
        JPEG2000Lossless,
        lambda a, b: imagecodecs.jpeg2k_encode(
            a, level=0, codecformat="j2k", reversible=True, bitspersample=b
        ),
    ),
]


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize(
    ("name", "syntax", "encode"), _LOSSLESS, ids=[c[0] for c in _LOSSLESS]
)
def test_hostile_lossless_dicom_decodes_to_the_original_pixels(
    name: str, syntax: str, encode: Callable[[np.ndarray, int], bytes], bits: int
) -> None:
    original = _pixels(bits)
    data = _encapsulated(original, bits, encode(original, bits), syntax)

    image = decode_dicom(data)

    assert image.pixels.shape == original.shape
    assert image.bits_stored == bits
    np.testing.assert_array_equal(image.pixels, _full_scale(original, bits))


def test_hostile_jpeg_ls_near_lossless_stays_within_its_bound() -> None:
    original = _pixels(16)
    frame = imagecodecs.jpegls_encode(original, level=3)
    data = _encapsulated(original, 16, frame, JPEGLSNearLossless)

    decoded = decode_dicom(data).pixels.astype(np.int32)

    error = np.abs(decoded - original.astype(np.int32))
    assert error.max() <= 3
    assert error.max() > 0  # it really was lossy, so the bound was exercised


@pytest.mark.parametrize(("name", "syntax", "encode"), _LOSSLESS[:2], ids=["ls", "sv1"])
def test_hostile_truncated_jpeg_fragment_is_refused(
    name: str, syntax: str, encode: Callable[[np.ndarray, int], bytes]
) -> None:
    original = _pixels(16)
    frame = encode(original, 16)
    data = _encapsulated(original, 16, frame[: len(frame) // 2], syntax)

    with pytest.raises(UnsupportedImageError, match="truncated"):
        decode_dicom(data)


def _deflated_meta() -> bytes:
    """The preamble and file meta of a deflated file, to put any body after."""
    small = dicom_bytes(
        mammogram(np.zeros((2, 2), np.uint16)), syntax=DeflatedExplicitVRLittleEndian
    )
    (group_length,) = struct.unpack("<I", small[140:144])
    return small[: 144 + group_length]


def deflate_bomb(pixel_bytes: int, rows: int = 64, columns: int = 64) -> bytes:
    """A deflated MG file whose Pixel Data inflates to ``pixel_bytes`` zeros."""
    header = io.BytesIO()
    dataset = mammogram(np.zeros((rows, columns), np.uint16))
    del dataset.PixelData
    header.write(dicom_bytes(dataset, preamble=False))
    header.write(_PIXEL_DATA_OW + struct.pack("<I", pixel_bytes))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(header.getvalue())]
    zeros = bytes(1 << 20)
    for _ in range(pixel_bytes >> 20):
        parts.append(packer.compress(zeros))
    parts.append(packer.compress(bytes(pixel_bytes % (1 << 20))))
    parts.append(packer.flush())
    return _deflated_meta() + b"".join(parts)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return deflate_bomb(MAX_INFLATED_BYTES + (8 << 20))


def test_hostile_deflate_bomb_is_refused_by_the_worker_decoder(bomb: bytes) -> None:
    assert len(bomb) < MAX_INFLATED_BYTES // 500  # the ratio that makes it a bomb

    with pytest.raises(UnsupportedImageError, match="inflates to more than"):
        decode_dicom(bomb)


def test_hostile_deflate_bomb_is_refused_at_the_gateway(bomb: bytes) -> None:
    with pytest.raises(ApiError) as refused:
        check_dicom(bomb, complete=True)

    assert (refused.value.status, refused.value.code) == (422, "invalid_dicom")
    assert "inflates to more than" in str(refused.value)
    with pytest.raises(UnsupportedImageError, match="inflates to more than"):
        inspect_dicom(bomb)


def test_hostile_inflate_holds_no_more_than_its_limit() -> None:
    limit = 4 << 20
    stream = io.BytesIO(deflate_bomb(64 << 20)[len(_deflated_meta()) :])

    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedImageError):
            inflate(stream, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * limit


def test_hostile_deflate_cut_short_is_refused() -> None:
    whole = deflate_bomb(64 * 64 * 2)

    with pytest.raises(UnsupportedImageError, match="truncated"):
        decode_dicom(whole[: len(whole) - 20])


def test_hostile_deflated_image_within_the_bound_decodes() -> None:
    original = _pixels(16, (64, 64))
    data = dicom_bytes(mammogram(original), syntax=DeflatedExplicitVRLittleEndian)

    image = decode_dicom(data)
    dataset = read_deflated(io.BytesIO(data), force=False)

    np.testing.assert_array_equal(image.pixels, original)
    assert dataset is not None and dataset.Rows == 64
    assert (
        read_deflated(io.BytesIO(dicom_bytes(mammogram(original))), force=False) is None
    )
