"""DICOM inspection (gateway, no pixel decoding) and decoding (enclave worker).

Accepted: single-frame, one sample per pixel, MONOCHROME1 or MONOCHROME2, 8 or 16
bits allocated, modality MG, in the transfer syntaxes of ``TRANSFER_SYNTAXES``.
Refused: colour, multi-frame (breast tomosynthesis and other multi-frame objects
need a different model input), other modalities (the reference model is for
mammography only), and JPEG baseline and extended (8 and 12-bit lossy JPEG loses
the detector's dynamic range and adds block artefacts the model was not trained on).

Only pixel-module and view attributes are ever read. pydicom converts values lazily,
so patient names, ids and dates are never decoded, validated, logged or returned.
"""

from __future__ import annotations

import io
import re
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from shared.errors import UnsupportedImageError
from shared.imaging.decode import MAX_PIXELS, DecodedImage
from shared.imaging.deflate import read_deflated
from shared.imaging.sniff import HEAD_BYTES, ImageKind, describe, sniff

NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
ENCAPSULATED_SYNTAXES = frozenset(
    {
        RLELossless,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
    }
)
JPEG_SYNTAXES = ENCAPSULATED_SYNTAXES - {RLELossless}
TRANSFER_SYNTAXES = NATIVE_SYNTAXES | ENCAPSULATED_SYNTAXES
ACCEPTED_MODALITIES = frozenset({"MG"})

_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
_DEFER_BYTES = 1024  # leave values longer than this unread at inspection
_FULL_SCALE = 65535.0
_END_OF_CODESTREAM = b"\xff\xd9"


@dataclass(frozen=True)
class DicomInfo:
    """The pixel-module facts the gateway needs; deliberately no patient field."""

    transfer_syntax_uid: str
    modality: str
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric_interpretation: str
    view: str | None


def inspect_dicom(source: bytes | BinaryIO) -> DicomInfo:
    """Validate a DICOM upload from its header; pixel data is located, not decoded.

    A stream must be seekable (the gateway spools uploads to a temporary file).
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    dataset, present = _read(stream, defer=True)
    return _validate(dataset, present)


def decode_dicom(data: bytes) -> DecodedImage:
    """Decode an accepted DICOM image to (rows, columns) uint16 for the model."""
    dataset, present = _read(io.BytesIO(data), defer=False)
    info = _validate(dataset, present)
    stored = _stored_values(_pixel_array(dataset, info), info)
    values, low, high = _modality_lut(stored, dataset, info)
    values, low, high = _voi_lut(values, dataset, low, high)
    if _inverts(dataset, info):
        values = low + high - values
    pixels = _full_scale(values, low, high)
    return DecodedImage(pixels, ImageKind.DICOM_FILE.value, info.bits_stored, info.view)


@contextmanager
def _pydicom_warnings_silenced() -> Iterator[None]:
    # pydicom warns (and logs) on truncated sequences and padding instead of
    # raising; the structural checks below catch those cases, so the warnings add
    # nothing. catch_warnings swaps process-wide state: acceptable while images are
    # decoded on one thread per process, revisit if decoding moves to threads.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _read(stream: BinaryIO, *, defer: bool) -> tuple[Dataset, int]:
    """Parse the dataset and return it with the number of pixel data bytes present."""
    start = stream.tell()
    head = stream.read(HEAD_BYTES)
    end = stream.seek(0, io.SEEK_END)
    stream.seek(start)
    kind = sniff(head)
    if kind is ImageKind.PNG:
        raise UnsupportedImageError(
            f"upload is {describe(head)}, not DICOM; decode it as a PNG"
        )
    try:
        with _pydicom_warnings_silenced():
            force = kind is ImageKind.DICOM_DATASET
            # Deflated datasets are inflated with a bound, never by pydicom.
            dataset = read_deflated(stream, force=force) or dcmread(
                stream, force=force, defer_size=_DEFER_BYTES if defer else None
            )
            present = _pixel_bytes_present(dataset, end)
    except UnsupportedImageError:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise _unreadable(exc) from exc
    except (TypeError, AttributeError, IndexError, zlib.error) as exc:
        raise _unreadable(exc) from exc
    return dataset, present


def _unreadable(exc: Exception) -> UnsupportedImageError:
    # The class name only: pydicom messages may quote element values.
    return UnsupportedImageError(
        f"DICOM could not be parsed ({type(exc).__name__}); the file is truncated "
        "or malformed, send a complete DICOM Part 10 file"
    )


def _transfer_syntax(dataset: Dataset) -> UID:
    """The file meta transfer syntax, or the encoding pydicom found for a bare one."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(str(meta.TransferSyntaxUID))
    implicit, little = dataset.original_encoding
    if not little:
        raise UnsupportedImageError(
            "DICOM dataset is big endian, which is retired; send little endian"
        )
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    # pydicom decodes pixels only when file meta names the transfer syntax.
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    return syntax


def _pixel_bytes_present(dataset: Dataset, end: int) -> int:
    """Bytes of pixel data in the file: -1 when absent or encapsulated and cut off."""
    if _PIXEL_DATA not in dataset:
        return -1
    element = dataset.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        # Deferred: pydicom seeked past the value without checking it exists.
        return max(0, min(element.length, end - element.value_tell))
    value = dataset.PixelData
    return len(value) if isinstance(value, bytes) else -1


def _validate(dataset: Dataset, present: int) -> DicomInfo:
    syntax = _transfer_syntax(dataset)
    if syntax not in TRANSFER_SYNTAXES:
        raise UnsupportedImageError(
            f"DICOM transfer syntax {syntax} ({syntax.name}) is not accepted; send "
            "uncompressed, deflated, RLE, lossless JPEG, JPEG-LS or JPEG 2000"
        )
    if any(tag in dataset for tag in _FLOAT_PIXEL_DATA):
        raise UnsupportedImageError(
            "DICOM holds float pixel data; send integer Pixel Data (7FE0,0010)"
        )
    if present < 0:
        raise UnsupportedImageError(
            "DICOM has no Pixel Data (7FE0,0010): it holds no image or is "
            "truncated; send a complete image object"
        )
    info = _pixel_module(dataset, syntax)
    if syntax in NATIVE_SYNTAXES:
        _check_native_length(info, present)
    return info


def _pixel_module(dataset: Dataset, syntax: UID) -> DicomInfo:
    modality = _text(dataset, "Modality")
    if modality not in ACCEPTED_MODALITIES:
        raise UnsupportedImageError(
            f"DICOM modality {modality!r} is not accepted; send mammography (MG)"
        )
    samples = _integer(dataset, "SamplesPerPixel")
    photometric = _text(dataset, "PhotometricInterpretation")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"DICOM has {samples} samples per pixel as {photometric!r}; send "
            "grayscale (MONOCHROME1 or MONOCHROME2, one sample per pixel)"
        )
    frames = _integer(dataset, "NumberOfFrames", default=1)
    if frames != 1:
        raise UnsupportedImageError(
            f"DICOM has {frames} frames; send a single-frame mammogram, not "
            "tomosynthesis or a multi-frame object"
        )
    rows, columns = _integer(dataset, "Rows"), _integer(dataset, "Columns")
    if not (0 < rows * columns <= MAX_PIXELS):
        raise UnsupportedImageError(
            f"DICOM declares {rows}x{columns} pixels, outside 1 to "
            f"{MAX_PIXELS:,}; send a mammogram at detector resolution"
        )
    allocated, stored, signed = _bit_layout(dataset)
    return DicomInfo(
        transfer_syntax_uid=str(syntax),
        modality=modality,
        rows=rows,
        columns=columns,
        bits_allocated=allocated,
        bits_stored=stored,
        signed=signed,
        photometric_interpretation=photometric,
        view=view_of(dataset),
    )


def _bit_layout(dataset: Dataset) -> tuple[int, int, bool]:
    allocated = _integer(dataset, "BitsAllocated")
    stored = _integer(dataset, "BitsStored")
    high = _integer(dataset, "HighBit", default=stored - 1)
    representation = _integer(dataset, "PixelRepresentation")
    if allocated not in (8, 16) or not 2 <= stored <= allocated:
        raise UnsupportedImageError(
            f"DICOM has {stored} bits stored in {allocated} allocated; send 8 or "
            "16 bits allocated with 2 to that many bits stored"
        )
    if high != stored - 1 or representation not in (0, 1):
        raise UnsupportedImageError(
            f"DICOM has high bit {high} for {stored} bits stored and pixel "
            f"representation {representation}; send high bit = bits stored - 1"
        )
    return allocated, stored, representation == 1


def _check_native_length(info: DicomInfo, present: int) -> None:
    expected = info.rows * info.columns * info.bits_allocated // 8
    # Odd value lengths are padded to even by one byte (PS3.5 section 7.1.1).
    if present not in (expected, expected + expected % 2):
        raise UnsupportedImageError(
            f"DICOM pixel data holds {present} bytes, expected {expected} for "
            f"{info.rows}x{info.columns} at {info.bits_allocated} bits; the file "
            "is truncated or inconsistent, send it again"
        )


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None or str(value).strip() == "":
        raise UnsupportedImageError(
            f"DICOM lacks {keyword}; send an image object with a complete "
            "image pixel module"
        )
    return str(value).strip().upper()


def _integer(dataset: Dataset, keyword: str, *, default: int | None = None) -> int:
    value = dataset.get(keyword)
    if value is None or value == "":
        if default is not None:
            return default
        raise UnsupportedImageError(
            f"DICOM lacks {keyword}; send an image object with a complete "
            "image pixel module"
        )
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise UnsupportedImageError(
            f"DICOM {keyword} is not an integer; send a well-formed image object"
        ) from exc


def _pixel_array(dataset: Dataset, info: DicomInfo) -> np.ndarray:
    if UID(info.transfer_syntax_uid) in JPEG_SYNTAXES:
        _check_codestream_end(dataset)
    if UID(info.transfer_syntax_uid) in ENCAPSULATED_SYNTAXES:
        # pylibjpeg covers every accepted compressed syntax; pinning it keeps
        # results independent of which other plugins happen to be installed.
        dataset.pixel_array_options(decoding_plugin="pylibjpeg")
    try:
        with _pydicom_warnings_silenced():
            array: np.ndarray = dataset.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, KeyError) as exc:
        raise UnsupportedImageError(
            f"DICOM pixel data could not be decoded ({type(exc).__name__}); the "
            "compressed stream is corrupt or inconsistent with its header"
        ) from exc
    if array.shape != (info.rows, info.columns):
        raise UnsupportedImageError(
            f"DICOM pixel data decoded to shape {array.shape}, expected "
            f"{(info.rows, info.columns)}; send a consistent image object"
        )
    return array


def _check_codestream_end(dataset: Dataset) -> None:
    """Refuse a JPEG family frame that stops before its end marker.

    The decoders return whatever rows they reached from a cut codestream without
    an error, so a truncated fragment would reach the model as a partial image.
    JPEG, JPEG-LS and JPEG 2000 codestreams all end with 0xFFD9 (EOI or EOC);
    fragments are padded to even length with zero bytes (PS3.5 A.4).
    """
    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except (ValueError, StopIteration, TypeError) as exc:
        raise UnsupportedImageError(
            f"DICOM encapsulated pixel data has no readable frame "
            f"({type(exc).__name__}); send a complete image object"
        ) from exc
    if not frame.rstrip(b"\x00").endswith(_END_OF_CODESTREAM):
        raise UnsupportedImageError(
            "DICOM compressed frame does not end with its end-of-image marker;"
            " the codestream is truncated, send the file again"
        )


def _stored_values(array: np.ndarray, info: DicomInfo) -> npt.NDArray[np.int32]:
    """Drop bits above Bits Stored; they may carry overlays or garbage."""
    values = array.astype(np.int32) & ((1 << info.bits_stored) - 1)
    if info.signed:
        sign = 1 << (info.bits_stored - 1)
        values = (values ^ sign) - sign
    return values


def _modality_lut(
    values: npt.NDArray[np.int32], dataset: Dataset, info: DicomInfo
) -> tuple[npt.NDArray[np.float64], float, float]:
    """Stored values to modality values, with the range they can span."""
    if info.signed:
        low, high = -(2.0 ** (info.bits_stored - 1)), 2.0 ** (info.bits_stored - 1) - 1
    else:
        low, high = 0.0, 2.0**info.bits_stored - 1
    sequence = dataset.get("ModalityLUTSequence")
    if sequence:
        return _apply_lut(values, sequence[0], "Modality LUT")
    slope = _decimal(dataset, "RescaleSlope", 1.0)
    intercept = _decimal(dataset, "RescaleIntercept", 0.0)
    if slope == 0.0:
        raise UnsupportedImageError(
            "DICOM Rescale Slope is 0, which erases the image; send a valid slope"
        )
    ends = sorted((low * slope + intercept, high * slope + intercept))
    rescaled = values.astype(np.float64) * slope + intercept
    return rescaled, ends[0], ends[1]


def _voi_lut(
    values: npt.NDArray[np.float64], dataset: Dataset, low: float, high: float
) -> tuple[npt.NDArray[np.float64], float, float]:
    """Apply the first VOI LUT, else the first window, else pass values through."""
    sequence = dataset.get("VOILUTSequence")
    if sequence:
        return _apply_lut(values, sequence[0], "VOI LUT")
    if dataset.get("WindowCenter") is None or dataset.get("WindowWidth") is None:
        return values, low, high
    centre = _first(dataset.WindowCenter)
    width = _first(dataset.WindowWidth)
    function = str(dataset.get("VOILUTFunction") or "LINEAR").strip().upper()
    return _window(values, centre, width, function), 0.0, 1.0


def _window(
    values: npt.NDArray[np.float64], centre: float, width: float, function: str
) -> npt.NDArray[np.float64]:
    """The VOI LUT functions of PS3.3 C.11.2.1.2, onto the range 0..1."""
    if function == "SIGMOID" and width > 0:
        result: npt.NDArray[np.float64] = 1.0 / (
            1.0 + np.exp(-4.0 * (values - centre) / width)
        )
        return result
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    if function == "LINEAR" and width > 1:
        return np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    if function == "LINEAR" and width == 1:
        return (values > centre - 0.5).astype(np.float64)
    raise UnsupportedImageError(
        f"DICOM window {function} with width {width} is not valid; send LINEAR "
        "with width >= 1, or LINEAR_EXACT or SIGMOID with width > 0"
    )


def _apply_lut(
    values: np.ndarray, item: Dataset, name: str
) -> tuple[npt.NDArray[np.float64], float, float]:
    """Look values up in a LUT item; written here because pydicom's helpers wrap
    out-of-range indices through uint16 and reject entry sizes other than 8 and 16."""
    try:
        entries, first, depth = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
        table = (
            np.frombuffer(raw, dtype="<u2")
            if isinstance(raw, bytes)
            else np.asarray(raw if isinstance(raw, list | tuple) else [raw])
        ).astype(np.float64)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedImageError(
            f"DICOM {name} is malformed; send a LUT with descriptor and data"
        ) from exc
    entries = entries or 65536  # 0 means 2**16 entries (PS3.3 C.11.1.1)
    if first >= 32768:
        first -= 65536  # the first mapped value may be stored as US for an SS
    if table.size < entries or not 1 <= depth <= 16:
        raise UnsupportedImageError(
            f"DICOM {name} has {table.size} entries of {depth} bits for "
            f"{entries} declared; send a consistent LUT"
        )
    indices = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.intp)
    return table[indices], 0.0, 2.0**depth - 1


def _inverts(dataset: Dataset, info: DicomInfo) -> bool:
    """Whether the output needs one inversion to read 0 as black.

    For DX and MG images (PS3.3 C.8.11.1.1 and C.8.11.7) Presentation LUT Shape
    must be INVERSE exactly when Photometric Interpretation is MONOCHROME1: both
    describe the same single inversion, not two. Either one is therefore enough and
    the pair still inverts once. The inversion is the last grayscale stage, after
    the VOI LUT, because window centre and VOI LUT inputs refer to the values before
    it; it reflects values within the VOI output range.
    """
    shape = str(dataset.get("PresentationLUTShape") or "").strip().upper()
    return info.photometric_interpretation == "MONOCHROME1" or shape == "INVERSE"


def _full_scale(
    values: npt.NDArray[np.float64], low: float, high: float
) -> npt.NDArray[np.uint16]:
    """Map the last stage's range [low, high] linearly onto 0..65535.

    Without any LUT, 16 stored bits pass through unchanged and 12 bits scale by
    65535 / 4095, the same rule as 8-bit PNG's v * 257.
    """
    if high <= low:
        raise UnsupportedImageError(
            f"DICOM grayscale range {low}..{high} is empty; send a valid LUT"
        )
    scaled = np.rint((values - low) * (_FULL_SCALE / (high - low)))
    return np.ascontiguousarray(np.clip(scaled, 0, _FULL_SCALE), dtype=np.uint16)


def _decimal(dataset: Dataset, keyword: str, default: float) -> float:
    value = dataset.get(keyword)
    return default if value is None or value == "" else float(value)


def _first(value: Any) -> float:
    """Window attributes are multi-valued; the first pair is the default view."""
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return float(value)
    return float(value[0])


# View for Mammography (CID 4014) in SNOMED CT and the legacy SNOMED RT form; many
# mammography systems still send the deprecated SNM3 designator for the latter.
_VIEW_CODES = {
    ("SCT", "399162004"): "CC",
    ("SRT", "R-10242"): "CC",
    ("SNM3", "R-10242"): "CC",
    ("SCT", "399368009"): "MLO",
    ("SRT", "R-10226"): "MLO",
    ("SNM3", "R-10226"): "MLO",
}
_DESCRIPTION_TOKENS: dict[str, tuple[str | None, str | None]] = {
    "L": ("L", None),
    "R": ("R", None),
    "CC": (None, "CC"),
    "MLO": (None, "MLO"),
    "LCC": ("L", "CC"),
    "RCC": ("R", "CC"),
    "LMLO": ("L", "MLO"),
    "RMLO": ("R", "MLO"),
}


def view_of(dataset: Dataset) -> str | None:
    """ "L-CC", "R-CC", "L-MLO", "R-MLO", or None when the tags do not settle it.

    View, first source present wins: View Position (0018,5101), then the first
    View Code Sequence (0054,0220) item, then whole words of Series Description
    (0008,103E) such as "CC" or "RMLO". Laterality, likewise: Image Laterality
    (0020,0062), Laterality (0020,0060), Frame Laterality (0020,9072) in the shared
    or first per-frame functional group, then the L or R of those words. A source
    that is present but names another view (ML, XCCL) or side (B, U) gives None
    rather than falling through to a weaker source.
    """
    words = _description_words(dataset)
    view = _first_present(
        _view_position(dataset), _view_code(dataset), _word_view(words)
    )
    side = _first_present(
        _code_string(dataset, "ImageLaterality"),
        _code_string(dataset, "Laterality"),
        _frame_laterality(dataset),
        _word_side(words),
    )
    if view in ("CC", "MLO") and side in ("L", "R"):
        return f"{side}-{view}"
    return None


def _first_present(*candidates: str | None) -> str | None:
    return next((value for value in candidates if value), None)


def _code_string(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    text = "" if value is None else str(value).strip().upper()
    return text or None


def _view_position(dataset: Dataset) -> str | None:
    return _code_string(dataset, "ViewPosition")


def _view_code(dataset: Dataset) -> str | None:
    sequence = dataset.get("ViewCodeSequence")
    if not sequence:
        return None
    item = sequence[0]
    key = (
        str(item.get("CodingSchemeDesignator", "")).strip().upper(),
        str(item.get("CodeValue", "")).strip().upper(),
    )
    return _VIEW_CODES.get(key, "OTHER")


def _frame_laterality(dataset: Dataset) -> str | None:
    for keyword in (
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
    ):
        groups = dataset.get(keyword)
        anatomy = groups[0].get("FrameAnatomySequence") if groups else None
        if anatomy:
            return _code_string(anatomy[0], "FrameLaterality")
    return None


def _description_words(dataset: Dataset) -> list[tuple[str | None, str | None]]:
    text = str(dataset.get("SeriesDescription") or "").upper()
    words = re.split(r"[^A-Z0-9]+", text)
    return [_DESCRIPTION_TOKENS[word] for word in words if word in _DESCRIPTION_TOKENS]


def _word_view(words: list[tuple[str | None, str | None]]) -> str | None:
    views = {view for _side, view in words if view}
    return views.pop() if len(views) == 1 else None


def _word_side(words: list[tuple[str | None, str | None]]) -> str | None:
    sides = {side for side, _view in words if side}
    return sides.pop() if len(sides) == 1 else None
