"""The decoded form every image takes on its way to the model, and the dispatcher.

Whatever arrives (16-bit or 8-bit grayscale PNG, DICOM in any accepted transfer
syntax) leaves as one ``DecodedImage``: a C-contiguous ``uint16`` array of shape
(rows, columns) on the full 0..65535 scale, where 0 is displayed black.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.imaging.sniff import HEAD_BYTES, ImageKind, sniff

MAX_PIXELS = 40_000_000
"""Largest image accepted, checked from headers before any pixel is decoded.

Full-field digital mammography detectors stop near 4,000 x 6,000 pixels; the cap
leaves room above that and keeps a forged header from claiming gigabytes.
"""


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for preprocessing; holds no patient field by construction.

    ``bits_stored`` is the precision the source carried (8, 12, 16, ...) even though
    ``pixels`` is always rescaled to 16 bits. ``view`` is "L-CC", "R-CC", "L-MLO",
    "R-MLO" or None when the source does not say.
    """

    pixels: npt.NDArray[np.uint16]
    source: str
    bits_stored: int
    view: str | None

    def __repr__(self) -> str:
        # Never let a stray log line print pixel values.
        return (
            f"DecodedImage(shape={self.pixels.shape}, source={self.source!r}, "
            f"bits_stored={self.bits_stored}, view={self.view!r})"
        )


def decode_image(data: bytes) -> DecodedImage:
    """Sniff ``data`` and decode it with the matching decoder."""
    # Imported here because png and dicom import DecodedImage from this module.
    from shared.imaging.dicom import decode_dicom
    from shared.imaging.png import decode_png

    kind = sniff(data[:HEAD_BYTES])
    if kind is ImageKind.PNG:
        return decode_png(data)
    return decode_dicom(data)
