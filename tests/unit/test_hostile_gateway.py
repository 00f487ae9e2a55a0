"""Hostile and broken uploads at the gateway, each with its status and stable code.

Content decides the type, whatever the label; anything refused here leaves no job,
no object and no message behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from tests.imaging_factories import (
    PNG_SIGNATURE,
    dicom_bytes,
    ihdr,
    mammogram,
    png_bytes,
    png_chunk,
    private_undefined_sequence,
)
from tests.unit.gateway_helpers import Mesh, build_mesh
from tests.unit.test_hostile_imaging import deflate_bomb

pytestmark = pytest.mark.timeout(30)

SUBMIT = {"Authorization": "Bearer tok-submit"}
BOUNDARY = "hostile-boundary"


def _png16(side: int = 64) -> bytes:
    values = np.linspace(0, 65535, side * side).astype(np.uint16)
    return png_bytes(values.reshape(side, side))


def _dicom(**attributes: object) -> bytes:
    pixels = (np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64)
    return dicom_bytes(mammogram(pixels, **attributes))


def _private_first() -> bytes:
    dataset = mammogram((np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64))
    private_undefined_sequence(dataset)
    return dicom_bytes(dataset)


def _no_pixels() -> bytes:
    dataset = mammogram(np.zeros((64, 64), np.uint16))
    del dataset.PixelData
    return dicom_bytes(dataset)


def _huge_png() -> bytes:
    return PNG_SIGNATURE + ihdr(100_000, 100_000, 16, 0) + png_chunk(b"IEND", b"")


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    built = build_mesh()
    async with built.client:
        yield built


async def _raw(mesh: Mesh, data: bytes, label: str, **params: str) -> httpx.Response:
    return await mesh.client.post(
        "/v1/jobs",
        params=params,
        headers=SUBMIT | {"Content-Type": label},
        content=data,
    )


def _assert_nothing_left(mesh: Mesh) -> None:
    assert mesh.results.jobs == {}
    assert mesh.store.objects == {} and mesh.store.uploads == {}
    assert mesh.publisher.messages == []


@pytest.mark.parametrize(
    ("data", "label", "params"),
    [
        (_png16(), "application/dicom", {"view": "L-CC"}),
        (_dicom(), "image/png", {}),
        (
            dicom_bytes(mammogram(np.zeros((64, 64), np.uint16)), preamble=False),
            "image/png",
            {},
        ),
        (_private_first(), "application/dicom", {}),
        (
            png_bytes((np.arange(4096) % 256).astype(np.uint8).reshape(64, 64)),
            "image/png",
            {"view": "L-MLO"},
        ),
        (_png16(), "image/png", {"view": "R-MLO"}),
    ],
    ids=[
        "png-labelled-dicom",
        "dicom-labelled-png",
        "dicom-without-preamble",
        "private-undefined-sequence-first",
        "8-bit-png",
        "16-bit-png-full-range",
    ],
)
async def test_hostile_acceptable_content_is_queued_whatever_its_label(
    mesh: Mesh, data: bytes, label: str, params: dict[str, str]
) -> None:
    answer = await _raw(mesh, data, label, **params)

    assert answer.status_code == 202, answer.text
    assert len(mesh.publisher.messages) == 1 and len(mesh.store.objects) == 1


@pytest.mark.parametrize(
    ("data", "label", "status", "code"),
    [
        (
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"1 0 obj\n" * 50,
            "image/png",
            415,
            "unsupported_media_type",
        ),
        (b"", "image/png", 415, "unsupported_media_type"),
        (_dicom()[:-1000], "application/dicom", 422, "invalid_dicom"),
        (_dicom()[:300], "application/dicom", 422, "invalid_dicom"),
        (_no_pixels(), "application/dicom", 422, "invalid_dicom"),
        (
            png_bytes(np.zeros((8, 8, 3), np.uint8), colour_type=2),
            "image/png",
            422,
            "unsupported_image",
        ),
        (_huge_png(), "image/png", 422, "unsupported_image"),
        (deflate_bomb(200 << 20), "application/dicom", 422, "invalid_dicom"),
    ],
    ids=[
        "pdf-labelled-png",
        "zero-bytes",
        "truncated-dicom",
        "dicom-cut-in-header",
        "dicom-without-pixel-data",
        "rgb-png",
        "png-header-claims-10g-pixels",
        "deflate-bomb",
    ],
)
async def test_hostile_refused_content_leaves_nothing(
    mesh: Mesh, data: bytes, label: str, status: int, code: str
) -> None:
    answer = await _raw(mesh, data, label, view="L-CC")

    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code
    _assert_nothing_left(mesh)


def _part(name: str, body: bytes, *headers: str) -> bytes:
    lines = [f'Content-Disposition: form-data; name="{name}"', *headers]
    head = f"--{BOUNDARY}\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    return head.encode() + body + b"\r\n"


async def _form(mesh: Mesh, body: bytes | AsyncIterator[bytes]) -> httpx.Response:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return await mesh.client.post(
        "/v1/jobs", headers=SUBMIT | {"Content-Type": content_type}, content=body
    )


async def test_hostile_thousands_of_part_headers_are_400(mesh: Mesh) -> None:
    padding = [f"X-Pad-{i}: {'a' * 20}" for i in range(5000)]
    body = _part("view", b"L-CC", *padding) + _part("file", _png16())
    body += f"--{BOUNDARY}--\r\n".encode()

    answer = await _form(mesh, body)

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    _assert_nothing_left(mesh)


async def test_hostile_long_epilogue_is_refused_and_leaves_nothing() -> None:
    mesh = build_mesh(max_upload_bytes=1 << 20, max_form_overhead_bytes=64 * 1024)
    body = _part("view", b"L-CC") + _part("file", _png16())
    body += f"--{BOUNDARY}--\r\n".encode() + b"epilogue " * (300 * 1024)
    async with mesh.client:
        answer = await _form(mesh, _pieces(body))

    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "payload_too_large"
    _assert_nothing_left(mesh)


async def _pieces(data: bytes, step: int = 16384) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


async def test_hostile_chunked_body_past_the_cap_is_413() -> None:
    mesh = build_mesh(max_upload_bytes=100_000, max_form_overhead_bytes=1024)
    rng = np.random.default_rng(3)
    image = png_bytes(rng.integers(0, 65535, (300, 300), dtype=np.uint16))
    async with mesh.client:
        answer = await mesh.client.post(
            "/v1/jobs",
            params={"view": "L-CC"},
            headers=SUBMIT | {"Content-Type": "image/png"},
            content=_pieces(image),
        )

    assert len(image) > 101_024
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    _assert_nothing_left(mesh)


@pytest.mark.parametrize("declared", ["10", "999999999999"])
async def test_hostile_lying_content_length_is_refused(declared: str) -> None:
    mesh = build_mesh(max_upload_bytes=100_000, max_form_overhead_bytes=1024)
    rng = np.random.default_rng(4)
    image = png_bytes(rng.integers(0, 65535, (300, 300), dtype=np.uint16))
    async with mesh.client:
        answer = await mesh.client.post(
            "/v1/jobs",
            params={"view": "L-CC"},
            headers=SUBMIT | {"Content-Type": "image/png", "Content-Length": declared},
            content=_pieces(image),
        )

    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    _assert_nothing_left(mesh)
