"""The worker's memory hygiene per job: plaintext wiped off the loop, heaps trimmed."""

from __future__ import annotations

import numpy as np
import pytest

from services.enclave_worker import jobs
from shared.errors import ObscuraError
from tests.imaging_factories import png_bytes


def test_decode_and_wipe_decodes_then_zeroes_the_plaintext() -> None:
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    plaintext = bytearray(png_bytes(pixels))

    decoded = jobs.decode_and_wipe(plaintext)

    assert np.array_equal(decoded.pixels, pixels)
    assert plaintext == bytes(len(plaintext)) and len(plaintext) > 0


def test_decode_and_wipe_zeroes_the_plaintext_when_decoding_fails() -> None:
    plaintext = bytearray(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    with pytest.raises(ObscuraError):
        jobs.decode_and_wipe(plaintext)
    assert plaintext == bytes(len(plaintext))


def test_release_freed_memory_uses_glibc_malloc_trim_on_linux() -> None:
    assert jobs._LIBC is not None
    jobs.release_freed_memory()
