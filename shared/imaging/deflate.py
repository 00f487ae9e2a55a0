"""Read Deflated Explicit VR Little Endian datasets (PS3.5 A.5) with a size bound.

pydicom inflates a deflated dataset whole with ``zlib.decompress`` and no limit;
deflate reaches about 1000:1, so a one-megabyte upload could claim a gigabyte in
the gateway and far more in the enclave. Here the file meta is read first and, for
the deflated syntax, the rest is inflated in steps up to ``MAX_INFLATED_BYTES``
and parsed from that copy, so pydicom never sees the deflated bytes.
"""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

from pydicom.dataset import Dataset

# pydicom offers file meta reading publicly only for paths; the gateway and the
# worker hold streams, so the stream form behind it is used.
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from shared.errors import UnsupportedImageError
from shared.imaging.decode import MAX_PIXELS

MAX_INFLATED_BYTES = 2 * MAX_PIXELS + 16 * 1024 * 1024
"""Largest inflated dataset: the biggest accepted 16-bit image plus 16 MiB of tags."""

_READ_BYTES = 1024 * 1024


def read_deflated(
    stream: BinaryIO, *, force: bool, limit: int = MAX_INFLATED_BYTES
) -> Dataset | None:
    """The dataset when the file meta names the deflated syntax, else None.

    On None the stream is back where it was, for an ordinary ``dcmread``.
    """
    start = stream.tell()
    read_preamble(stream, force)
    meta = _read_file_meta_info(stream)
    syntax = meta.get("TransferSyntaxUID")
    if syntax is None or UID(str(syntax)) != DeflatedExplicitVRLittleEndian:
        stream.seek(start)
        return None
    inflated = inflate(stream, limit)
    dataset = read_dataset(
        io.BytesIO(inflated), is_implicit_VR=False, is_little_endian=True
    )
    dataset.file_meta = meta
    return dataset


def inflate(stream: BinaryIO, limit: int) -> bytes:
    """Inflate a raw deflate stream, refusing it past ``limit`` bytes or cut short."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while not inflater.eof:
        chunk = inflater.unconsumed_tail or stream.read(_READ_BYTES)
        if not chunk:
            raise UnsupportedImageError(
                "DICOM deflated dataset ends before its deflate stream does; the"
                " file is truncated, send it whole"
            )
        # max_length is at least 1 here: 0 would mean no limit to zlib.
        out += inflater.decompress(chunk, limit + 1 - len(out))
        if len(out) > limit:
            raise UnsupportedImageError(
                f"DICOM deflated dataset inflates to more than {limit:,} bytes;"
                " send the image uncompressed or with a lossless pixel codec"
            )
    return bytes(out)
