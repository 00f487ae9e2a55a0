from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from shared.errors import UnsupportedImageError
from shared.imaging.decode import decode_image
from shared.imaging.dicom import decode_dicom, inspect_dicom
from tests.imaging_factories import (
    compressed,
    dicom_bytes,
    mammogram,
    private_undefined_sequence,
)


def _ramp(height: int = 24, width: int = 16) -> np.ndarray:
    return (
        np.linspace(0, 65535, height * width).astype(np.uint16).reshape(height, width)
    )


def _file(pixels: np.ndarray | None = None, **attributes: object) -> bytes:
    return dicom_bytes(mammogram(_ramp() if pixels is None else pixels, **attributes))


def test_decode_dicom_16_bit_passes_through_unchanged() -> None:
    pixels = _ramp()
    decoded = decode_dicom(_file(pixels))
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.pixels.flags.c_contiguous and decoded.pixels.dtype == np.uint16
    assert (decoded.source, decoded.bits_stored, decoded.view) == ("dicom", 16, "L-CC")


@pytest.mark.parametrize("implicit", [False, True])
def test_decode_dicom_bare_dataset_without_preamble(implicit: bool) -> None:
    pixels = _ramp()
    data = dicom_bytes(mammogram(pixels), preamble=False, implicit=implicit)
    np.testing.assert_array_equal(decode_image(data).pixels, pixels)
    assert inspect_dicom(data).rows == 24


def test_inspect_dicom_reports_pixel_module_and_no_patient_field() -> None:
    info = inspect_dicom(io.BytesIO(_file(ViewPosition="MLO", ImageLaterality="R")))
    assert (info.rows, info.columns, info.bits_stored, info.view) == (
        24,
        16,
        16,
        "R-MLO",
    )
    assert info.modality == "MG" and info.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    decoded = decode_dicom(_file())
    for text in (repr(info), repr(decoded)):
        assert "FAKE" not in text and "19700101" not in text


def test_inspect_dicom_truncated_pixel_data_refused() -> None:
    data = _file()
    with pytest.raises(UnsupportedImageError, match="holds 668 bytes, expected 768"):
        inspect_dicom(data[:-100])
    with pytest.raises(UnsupportedImageError, match="holds 668 bytes, expected 768"):
        decode_dicom(data[:-100])


def test_inspect_dicom_truncated_header_refused() -> None:
    data = _file()
    with pytest.raises(UnsupportedImageError, match="no Pixel Data"):
        inspect_dicom(data[:300])


def test_inspect_dicom_without_pixel_data_refused() -> None:
    ds = mammogram(_ramp())
    del ds.PixelData
    with pytest.raises(UnsupportedImageError, match="no Pixel Data"):
        inspect_dicom(dicom_bytes(ds))


def test_inspect_dicom_pixel_length_mismatch_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="expected 1536 for 48x16"):
        inspect_dicom(_file(Rows=48))


def test_inspect_dicom_odd_length_pad_byte_accepted() -> None:
    ds = mammogram(np.arange(15, dtype=np.uint8).reshape(3, 5))
    assert inspect_dicom(dicom_bytes(ds)).bits_allocated == 8  # 15 bytes + 1 pad


def test_decode_dicom_private_undefined_sequence_before_image_tags() -> None:
    pixels = _ramp()
    for implicit in (False, True):
        ds = mammogram(pixels)
        private_undefined_sequence(ds)
        data = dicom_bytes(ds, preamble=not implicit, implicit=implicit)
        np.testing.assert_array_equal(decode_dicom(data).pixels, pixels)


def test_decode_dicom_masks_garbage_above_bits_stored() -> None:
    stored = np.arange(24 * 16, dtype=np.uint16).reshape(24, 16) * 10  # < 4096
    dirty = stored | np.uint16(0xA000)  # overlay bits above bit 11
    decoded = decode_dicom(_file(dirty, BitsStored=12, HighBit=11))
    expected = np.rint(stored * (65535 / 4095)).astype(np.uint16)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.bits_stored == 12


def test_decode_dicom_signed_sign_extends_from_bits_stored() -> None:
    stored = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    dirty = (stored.view(np.uint16) & 0x0FFF) | 0x5000  # high bits are garbage
    decoded = decode_dicom(_file(dirty.view(np.int16), BitsStored=12, HighBit=11))
    expected = np.rint((stored.astype(float) + 2048) * 65535 / 4095)
    np.testing.assert_array_equal(decoded.pixels, expected.astype(np.uint16))


def test_decode_dicom_monochrome1_inverted_once() -> None:
    pixels = _ramp()
    decoded = decode_dicom(_file(pixels, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(decoded.pixels, 65535 - pixels)


def test_decode_dicom_monochrome1_with_inverse_shape_still_once() -> None:
    pixels = _ramp()
    data = _file(
        pixels, PhotometricInterpretation="MONOCHROME1", PresentationLUTShape="INVERSE"
    )
    np.testing.assert_array_equal(decode_dicom(data).pixels, 65535 - pixels)


def test_decode_dicom_inversion_follows_window() -> None:
    # Window centre refers to values before inversion: 100 maps to the middle.
    pixels = np.array([[0, 100, 200, 4095]], dtype=np.uint16)
    data = _file(
        pixels,
        BitsStored=12,
        HighBit=11,
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter=100.5,
        WindowWidth=201,
    )
    assert decode_dicom(data).pixels.tolist() == [[65535, 32768, 0, 0]]


def test_decode_dicom_rescale_slope_intercept() -> None:
    pixels = np.array([[0, 1000, 4095]], dtype=np.uint16)
    data = _file(
        pixels, BitsStored=12, HighBit=11, RescaleSlope=2, RescaleIntercept=-1000
    )
    # Range is -1000..7190; the value 1000 becomes 1000 in that range.
    expected = np.rint(np.array([0, 2000, 8190]) * 65535 / 8190).astype(np.uint16)
    assert decode_dicom(data).pixels.tolist() == [expected.tolist()]


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("LINEAR", [0, 0, 32768, 65535, 65535]),
        ("LINEAR_EXACT", [0, 0, 32768, 65535, 65535]),
    ],
)
def test_decode_dicom_window_linear_functions(
    function: str, expected: list[int]
) -> None:
    pixels = np.array([[0, 1000, 2048, 3096, 4095]], dtype=np.uint16)
    data = _file(
        pixels,
        BitsStored=12,
        HighBit=11,
        WindowCenter=[2048.5 if function == "LINEAR" else 2048, 100],
        WindowWidth=[2049 if function == "LINEAR" else 2048, 50],
        VOILUTFunction=function,
    )
    assert decode_dicom(data).pixels.tolist() == [expected]


def test_decode_dicom_window_sigmoid() -> None:
    pixels = np.array([[0, 1000, 2048, 3096, 4095]], dtype=np.uint16)
    data = _file(
        pixels,
        BitsStored=12,
        HighBit=11,
        WindowCenter=2048,
        WindowWidth=1024,
        VOILUTFunction="SIGMOID",
    )
    curve = 65535 / (1 + np.exp(-4 * (pixels.astype(float) - 2048) / 1024))
    assert decode_dicom(data).pixels.tolist() == np.rint(curve).astype(int).tolist()


def test_decode_dicom_voi_lut_sequence_wins_over_window() -> None:
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 10, 8])
    item.add_new(0x00283006, "US", [0, 85, 170, 255])
    pixels = np.array([[0, 10, 11, 12, 13, 500]], dtype=np.uint16)
    data = _file(pixels, VOILUTSequence=Sequence([item]), WindowCenter=1, WindowWidth=2)
    assert decode_dicom(data).pixels.tolist() == [[0, 0, 21845, 43690, 65535, 65535]]


def test_decode_dicom_rle_lossless() -> None:
    pixels = _ramp(64, 48)
    data = compressed(mammogram(pixels), RLELossless)
    assert inspect_dicom(data).transfer_syntax_uid == RLELossless
    np.testing.assert_array_equal(decode_dicom(data).pixels, pixels)


def test_decode_dicom_jpeg2000_lossless() -> None:
    pixels = _ramp(64, 48)
    data = compressed(mammogram(pixels), JPEG2000Lossless, encoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(decode_dicom(data).pixels, pixels)


def test_decode_dicom_jpeg2000_lossy_close() -> None:
    pixels = _ramp(64, 48)
    data = compressed(
        mammogram(pixels),
        JPEG2000,
        encoding_plugin="pylibjpeg",
        j2k_cr=[20],
    )
    error = np.abs(decode_dicom(data).pixels.astype(int) - pixels.astype(int))
    assert error.mean() < 2000


def test_decode_dicom_deflated() -> None:
    pixels = _ramp()
    data = dicom_bytes(mammogram(pixels), syntax=DeflatedExplicitVRLittleEndian)
    assert inspect_dicom(data).rows == 24
    np.testing.assert_array_equal(decode_dicom(data).pixels, pixels)


def test_decode_dicom_truncated_rle_refused() -> None:
    data = compressed(mammogram(_ramp(64, 48)), RLELossless)
    with pytest.raises(UnsupportedImageError, match=r"no Pixel Data|truncated"):
        decode_dicom(data[:-200])


def test_inspect_dicom_jpeg_baseline_refused() -> None:
    ds = mammogram(np.zeros((8, 8), np.uint8))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    data = dicom_bytes(ds, syntax=JPEGBaseline8Bit)
    with pytest.raises(UnsupportedImageError, match=r"4\.50 \(JPEG Baseline"):
        inspect_dicom(data)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"Modality": "CT"}, "modality 'CT' is not accepted"),
        ({"NumberOfFrames": 2}, "2 frames"),
        ({"PhotometricInterpretation": "RGB"}, "'RGB'"),
        ({"Rows": 10_000, "Columns": 10_000}, "10000x10000 pixels"),
        ({"BitsStored": 16, "HighBit": 14}, "high bit 14"),
        ({"Modality": None}, "lacks Modality"),
    ],
)
def test_inspect_dicom_unsupported_attributes_refused(
    attributes: dict[str, Any], message: str
) -> None:
    with pytest.raises(UnsupportedImageError, match=message):
        inspect_dicom(_file(**attributes))


def test_inspect_dicom_png_refused() -> None:
    from tests.imaging_factories import png_bytes

    with pytest.raises(UnsupportedImageError, match="not DICOM"):
        inspect_dicom(png_bytes(np.zeros((2, 2), np.uint16)))
