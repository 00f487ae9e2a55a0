"""Builders for PNG and DICOM test images, made in memory so no binary is committed.

The PNG writer and reader here are deliberately independent of Pillow (zlib and
numpy only), so tests can check Pillow-based decoding against them.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

MAMMOGRAMS = Path(__file__).resolve().parents[1].parent / "shared/data/mammograms"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Adam7 passes as (x start, y start, x step, y step).
_ADAM7: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
)
_ADAM7 += ((1, 0, 2, 2), (0, 1, 1, 2))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body))
    )


def ihdr(width: int, height: int, depth: int, colour: int, interlace: int = 0) -> bytes:
    fields = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return png_chunk(b"IHDR", fields)


def png_bytes(
    samples: np.ndarray, *, colour_type: int = 0, interlace: bool = False
) -> bytes:
    """Encode (H, W) or (H, W, C) uint8/uint16 samples, cycling all five filters."""
    depth = 16 if samples.dtype == np.uint16 else 8
    height, width = samples.shape[:2]
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    rows: list[bytes] = []
    for x0, y0, dx, dy in passes:
        part = samples[y0::dy, x0::dx]
        if part.size:
            rows.extend(_filtered_rows(part, depth))
    header = ihdr(width, height, depth, colour_type, int(interlace))
    idat = png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
    return PNG_SIGNATURE + header + idat + png_chunk(b"IEND", b"")


def _filtered_rows(part: np.ndarray, depth: int) -> list[bytes]:
    channels = 1 if part.ndim == 2 else part.shape[2]
    bpp = channels * depth // 8
    dtype = ">u2" if depth == 16 else "u1"
    lines = (
        part.astype(dtype).reshape(part.shape[0], -1).view(np.uint8).astype(np.int32)
    )
    out = []
    previous = np.zeros(lines.shape[1], dtype=np.int32)
    for index, line in enumerate(lines):
        kind = index % 5
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        corner = np.concatenate([np.zeros(bpp, np.int32), previous[:-bpp]])
        predictor = _predict(kind, left, previous, corner)
        out.append(
            bytes([kind]) + ((line - predictor) % 256).astype(np.uint8).tobytes()
        )
        previous = line
    return out


def _predict(kind: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    if kind == 0:
        return np.zeros_like(a)
    if kind == 1:
        return a
    if kind == 2:
        return b
    if kind == 3:
        average: np.ndarray = (a + b) // 2
        return average
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth: np.ndarray = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return paeth


def reference_decode_png16(data: bytes) -> np.ndarray:
    """Independent 16-bit grayscale reader for files whose rows all use filter 0."""
    position, idat = 8, b""
    width = height = 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 2 * width)
    if rows[:, 0].any():
        raise ValueError("reference reader handles filter type 0 only")
    return rows[:, 1:].copy().view(">u2").astype(np.uint16)


def mammogram(pixels: np.ndarray, **attributes: Any) -> Dataset:
    """An MG For Presentation dataset around ``pixels``, with a fake patient."""
    ds = Dataset()
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.PatientName = "FAKE^PATIENT"
    ds.PatientID = "FAKE-ID-0001"
    ds.PatientBirthDate = "19700101"
    ds.ViewPosition = "CC"
    ds.ImageLaterality = "L"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def dicom_bytes(
    ds: Dataset,
    *,
    preamble: bool = True,
    syntax: str = ExplicitVRLittleEndian,
    implicit: bool = False,
) -> bytes:
    """Serialise as a Part 10 file, or as a bare dataset when ``preamble`` is off."""
    buffer = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(buffer, enforce_file_format=True)
    else:
        dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def compressed(ds: Dataset, syntax: str, **options: Any) -> bytes:
    """Compress the pixel data with pydicom's encoders and serialise."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(UID(syntax), **options)
    return dicom_bytes(ds, syntax=syntax)


def private_undefined_sequence(ds: Dataset) -> None:
    """Add a private sequence of undefined length ahead of the image attributes."""
    ds.add_new(0x00090010, "LO", "OBSCURA TEST")
    item = Dataset()
    item.add_new(0x00091002, "LO", "nested")
    item.is_undefined_length_sequence_item = True
    ds.add_new(0x00091001, "SQ", Sequence([item]))
    ds[0x00091001].is_undefined_length = True
