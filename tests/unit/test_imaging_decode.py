from __future__ import annotations

import numpy as np
import pytest

from shared.errors import Reason, UnsupportedImageError
from shared.imaging.decode import decode_image
from tests.imaging_factories import MAMMOGRAMS, dicom_bytes, mammogram, png_bytes


def test_decode_image_dispatches_png() -> None:
    samples = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    decoded = decode_image(png_bytes(samples))
    assert decoded.source == "png"
    np.testing.assert_array_equal(decoded.pixels, samples)


def test_decode_image_dispatches_dicom() -> None:
    samples = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    decoded = decode_image(dicom_bytes(mammogram(samples, ViewPosition="MLO")))
    assert (decoded.source, decoded.view) == ("dicom", "L-MLO")
    np.testing.assert_array_equal(decoded.pixels, samples)


def test_decode_image_pdf_refused() -> None:
    with pytest.raises(UnsupportedImageError) as caught:
        decode_image(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")
    assert caught.value.reason is Reason.UNSUPPORTED_IMAGE
    assert str(caught.value) == (
        "upload is a PDF document, not an accepted image; send PNG or DICOM "
        "(Part 10 file or bare dataset)"
    )


def test_decoded_image_repr_hides_pixels() -> None:
    decoded = decode_image(png_bytes(np.full((3, 3), 4242, dtype=np.uint16)))
    assert "4242" not in repr(decoded) and "(3, 3)" in repr(decoded)


@pytest.mark.parametrize("name", ["thumb_0_L_CC.png", "thumb_0_L_MLO.png"])
def test_decode_image_real_thumbnails(name: str) -> None:
    path = MAMMOGRAMS / name
    if not path.exists():
        pytest.skip(f"sample mammogram {path} is not on this machine")
    decoded = decode_image(path.read_bytes())
    assert decoded.pixels.shape == (768, 512)
    assert decoded.pixels.dtype == np.uint16 and decoded.bits_stored == 16
    assert decoded.pixels.max() > 32767
