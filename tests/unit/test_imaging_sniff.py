from __future__ import annotations

import numpy as np
import pytest

from shared.errors import Reason, UnsupportedImageError
from shared.imaging.sniff import HEAD_BYTES, ImageKind, sniff
from tests.imaging_factories import dicom_bytes, mammogram, png_bytes


def _png() -> bytes:
    return png_bytes(np.zeros((4, 4), np.uint16))


def test_sniff_png_regardless_of_declared_name() -> None:
    # A client may call it image/dicom or report.pdf; only the bytes count.
    assert sniff(_png()[:HEAD_BYTES]) is ImageKind.PNG


def test_sniff_dicom_part10_with_preamble() -> None:
    data = dicom_bytes(mammogram(np.zeros((4, 4), np.uint16)))
    assert sniff(data[:HEAD_BYTES]) is ImageKind.DICOM_FILE


@pytest.mark.parametrize("implicit", [False, True])
def test_sniff_bare_dataset_without_preamble(implicit: bool) -> None:
    ds = mammogram(np.zeros((4, 4), np.uint16))
    data = dicom_bytes(ds, preamble=False, implicit=implicit)
    assert sniff(data[:HEAD_BYTES]) is ImageKind.DICOM_DATASET


@pytest.mark.parametrize(
    ("head", "seen"),
    [
        (b"%PDF-1.7\n%\xe2\xe3", "a PDF document"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
        (b"", "empty"),
        (b"hello world, plain text", "unrecognised content starting 68 65 6c"),
    ],
)
def test_sniff_other_content_refused_naming_it(head: bytes, seen: str) -> None:
    with pytest.raises(UnsupportedImageError) as caught:
        sniff(head)
    assert caught.value.reason is Reason.UNSUPPORTED_IMAGE
    assert seen in str(caught.value)
    assert "PNG or DICOM" in str(caught.value)


def test_sniff_png_cut_before_ihdr_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="too short for its IHDR"):
        sniff(_png()[:20])


def test_sniff_png_without_leading_ihdr_refused() -> None:
    data = bytearray(_png())
    data[12:16] = b"tEXt"
    with pytest.raises(UnsupportedImageError, match="instead of a 13-byte IHDR"):
        sniff(bytes(data))
