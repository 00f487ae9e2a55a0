"""Image sniffing, validation and decoding for the gateway and the enclave worker.

The gateway uses ``sniff``, ``inspect_png`` and ``inspect_dicom`` to classify and
validate an upload before a job exists, without decoding pixels. The enclave worker
uses ``decode_image`` to turn unsealed bytes into a ``DecodedImage`` for the model.
Every refusal is an ``UnsupportedImageError`` (reason ``unsupported_image``).
"""

from shared.imaging.decode import MAX_PIXELS, DecodedImage, decode_image
from shared.imaging.dicom import DicomInfo, decode_dicom, inspect_dicom, view_of
from shared.imaging.png import PngInfo, decode_png, inspect_png
from shared.imaging.sniff import HEAD_BYTES, ImageKind, sniff

__all__ = [
    "HEAD_BYTES",
    "MAX_PIXELS",
    "DecodedImage",
    "DicomInfo",
    "ImageKind",
    "PngInfo",
    "decode_dicom",
    "decode_image",
    "decode_png",
    "inspect_dicom",
    "inspect_png",
    "sniff",
    "view_of",
]
