from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from shared.errors import UnsupportedImageError
from shared.imaging.png import decode_png, inspect_png
from tests.imaging_factories import (
    MAMMOGRAMS,
    PNG_SIGNATURE,
    ihdr,
    png_bytes,
    png_chunk,
    reference_decode_png16,
)


def _full_range(height: int = 37, width: int = 29) -> np.ndarray:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    values.flat[:4] = (0, 32767, 32768, 65535)
    return values


def _pillow_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("interlace", [False, True])
def test_decode_png_16_bit_keeps_every_value(interlace: bool) -> None:
    samples = _full_range()
    decoded = decode_png(png_bytes(samples, interlace=interlace))
    assert decoded.pixels.dtype == np.uint16
    assert decoded.pixels.flags.c_contiguous
    np.testing.assert_array_equal(decoded.pixels, samples)
    assert (decoded.source, decoded.bits_stored, decoded.view) == ("png", 16, None)


def test_decode_png_8_bit_scales_by_257() -> None:
    samples = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = decode_png(png_bytes(samples))
    np.testing.assert_array_equal(decoded.pixels, samples.astype(np.uint16) * 257)
    assert decoded.pixels.max() == 65535
    assert decoded.bits_stored == 8


def test_inspect_png_reads_ihdr() -> None:
    info = inspect_png(png_bytes(np.zeros((3, 5), np.uint16))[:33])
    assert (info.width, info.height, info.bit_depth, info.colour_type) == (5, 3, 16, 0)
    assert info.interlaced is False


@pytest.mark.parametrize(
    ("mode", "named"),
    [("RGB", "RGB at 8 bits"), ("RGBA", "RGBA"), ("P", "palette"), ("LA", "alpha")],
)
def test_decode_png_colour_refused(mode: str, named: str) -> None:
    data = _pillow_png(Image.new(mode, (4, 4)))
    with pytest.raises(UnsupportedImageError, match=named):
        decode_png(data)


def test_inspect_png_huge_ihdr_refused_before_decoding() -> None:
    # No IDAT at all: a refusal here proves nothing was inflated.
    data = PNG_SIGNATURE + ihdr(100_000, 100_000, 16, 0) + png_chunk(b"IEND", b"")
    with pytest.raises(UnsupportedImageError, match="above the limit"):
        decode_png(data)


def test_inspect_png_bad_crc_refused() -> None:
    data = bytearray(png_bytes(np.zeros((2, 2), np.uint16)))
    data[20] ^= 0x01
    with pytest.raises(UnsupportedImageError, match="CRC"):
        inspect_png(bytes(data))


def test_inspect_png_low_bit_depth_refused() -> None:
    data = PNG_SIGNATURE + ihdr(8, 8, 4, 0)
    with pytest.raises(UnsupportedImageError, match="4-bit grayscale"):
        inspect_png(data)


def test_decode_png_truncated_refused() -> None:
    data = png_bytes(_full_range(200, 200))
    with pytest.raises(UnsupportedImageError, match="truncated or corrupt"):
        decode_png(data[: len(data) // 2])


def test_decode_png_real_mammogram_exact_and_fast() -> None:
    path = MAMMOGRAMS / "1_L_CC.png"
    if not path.exists():
        pytest.skip(f"sample mammogram {path} is not on this machine")
    data = path.read_bytes()
    started = time.perf_counter()
    decoded = decode_png(data)
    elapsed = time.perf_counter() - started
    assert decoded.pixels.shape == (3328, 2560)  # rows x columns: portrait
    assert decoded.pixels.max() > 32767
    np.testing.assert_array_equal(decoded.pixels, reference_decode_png16(data))
    assert elapsed < 0.5, f"decoding took {elapsed:.3f} s"


def test_decode_png_fast_path_matches_pillow_and_refuses_damage() -> None:
    import zlib

    from shared.imaging.png import PngInfo, _unfiltered_16bit
    from tests.imaging_factories import PNG_SIGNATURE, ihdr, png_chunk

    samples = np.random.default_rng(5).integers(0, 65536, (40, 33), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    data = (
        PNG_SIGNATURE
        + ihdr(33, 40, 16, 0)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    info = PngInfo(33, 40, 16, 0, False)
    fast = _unfiltered_16bit(data, info)
    assert fast is not None and np.array_equal(fast, samples)
    with Image.open(io.BytesIO(data)) as image:
        assert np.array_equal(np.asarray(image, dtype=np.uint16), fast)
    assert _unfiltered_16bit(data[: len(data) // 2], info) is None
    flipped = bytearray(data)
    flipped[60] ^= 0xFF
    assert _unfiltered_16bit(bytes(flipped), info) is None
    assert np.array_equal(decode_png(data).pixels, samples)
