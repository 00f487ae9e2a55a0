"""The gateway over a fake results service and the real encryptor app on fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import structlog
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from shared.envelope import unseal_bytes
from tests.imaging_factories import (
    compressed,
    dicom_bytes,
    mammogram,
    png_bytes,
    png_chunk,
)
from tests.unit.gateway_helpers import Mesh, build_mesh

pytestmark = pytest.mark.timeout(30)

MARKER = b"OBSCURA-MARKER-51c0de"
SUBMIT = {"Authorization": "Bearer tok-submit"}


def _png(side: int = 64, *, noisy: bool = False) -> bytes:
    samples = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16)
    if noisy:
        samples = np.random.default_rng(7).integers(0, 65535, side * side, np.uint16)
    data = png_bytes(samples.reshape(side, side))
    comment = png_chunk(b"tEXt", b"Comment\x00" + MARKER)
    return data[:-12] + comment + data[-12:]


def _dicom(rows: int = 64, *, pixels: bool = True, **attributes: object) -> bytes:
    values = (np.arange(rows * 64) % 4096).astype(np.uint16).reshape(rows, 64)
    dataset = mammogram(values, **attributes)
    if not pixels:
        del dataset.PixelData
    return dicom_bytes(dataset)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    built = build_mesh()
    async with built.client:
        yield built


async def _post(mesh: Mesh, data: bytes, **fields: str) -> object:
    return await mesh.client.post(
        "/v1/jobs",
        headers=SUBMIT,
        data=fields or {"view": "L-CC"},
        files={"file": ("image.bin", data, "image/png")},
    )


async def _pieces(data: bytes, step: int = 7000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


def _error(answer: object) -> str:
    return str(answer.json()["error"])  # type: ignore[attr-defined]


async def test_gateway_submit_png_seals_and_queues(mesh: Mesh) -> None:
    image = _png()
    with structlog.testing.capture_logs() as logs:
        answer = await _post(mesh, image, view="R-MLO", priority="stat")

    assert answer.status_code == 202, answer.text  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    job = mesh.results.jobs[body["job_id"]]
    assert (body["status"], job["status"], job["view"]) == ("queued", "queued", "R-MLO")
    assert body["links"]["result"] == f"/v1/jobs/{body['job_id']}/result"
    assert job["nonce"] == body["nonce"] and len(body["nonce"]) == 32
    (message,) = mesh.publisher.messages
    assert (message.job_id, message.priority, message.nonce) == (
        body["job_id"],
        "stat",
        body["nonce"],
    )
    sealed = mesh.store.objects[message.object_key]
    assert MARKER not in sealed
    assert MARKER not in message.model_dump_json().encode()
    assert MARKER.decode() not in repr(logs) + repr(mesh.results.jobs)
    opened = await unseal_bytes(sealed, mesh.keys, message.image_context())
    assert bytes(opened) == image


async def test_gateway_raw_png_body_with_query_fields(mesh: Mesh) -> None:
    answer = await mesh.client.post(
        "/v1/jobs",
        params={"view": "L-CC", "model": "nyu-gmic"},
        headers=SUBMIT | {"Content-Type": "application/dicom"},
        content=_pieces(_png()),
    )

    assert answer.status_code == 202, answer.text
    assert mesh.publisher.messages[0].view == "L-CC"


async def test_gateway_without_token_is_401(mesh: Mesh) -> None:
    answer = await mesh.client.post("/v1/jobs", content=_png())

    assert answer.status_code == 401
    assert _error(answer) == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"


async def test_gateway_unknown_token_is_401(mesh: Mesh) -> None:
    answer = await mesh.client.get(
        "/v1/jobs/x", headers={"Authorization": "Bearer nope"}
    )

    assert answer.status_code == 401
    assert _error(answer) == "unauthorized"


async def test_gateway_missing_scope_is_403(mesh: Mesh) -> None:
    answer = await mesh.client.post(
        "/v1/jobs",
        headers={"Authorization": "Bearer tok-read"},
        data={"view": "L-CC"},
        files={"file": ("a.png", _png(), "image/png")},
    )

    assert answer.status_code == 403
    assert _error(answer) == "forbidden"
    assert mesh.results.jobs == {}


async def test_gateway_other_tenants_job_is_404(mesh: Mesh) -> None:
    job_id = (await _post(mesh, _png())).json()["job_id"]  # type: ignore[attr-defined]

    other = await mesh.client.get(
        f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer tok-other"}
    )
    own = await mesh.client.get(f"/v1/jobs/{job_id}", headers=SUBMIT)

    assert other.status_code == 404
    assert _error(other) == "not_found"
    assert own.status_code == 200
    assert own.json()["status"] == "queued"
    assert mesh.results.reads[-1] == (job_id, "t1")


@pytest.mark.parametrize("chunked", [False, True])
async def test_gateway_body_past_cap_is_413(chunked: bool) -> None:
    mesh = build_mesh(max_upload_bytes=20_000, max_form_overhead_bytes=1024)
    image = _png(side=200, noisy=True)
    async with mesh.client:
        answer = await mesh.client.post(
            "/v1/jobs",
            params={"view": "L-CC"},
            headers=SUBMIT | {"Content-Type": "image/png"},
            content=_pieces(image) if chunked else image,
        )

    assert len(image) > 21_000
    assert answer.status_code == 413
    assert _error(answer) == "payload_too_large"
    assert mesh.results.jobs == {}
    assert mesh.store.objects == {} and mesh.publisher.messages == []


async def test_gateway_lying_content_length_is_413_and_releases_job() -> None:
    mesh = build_mesh(max_upload_bytes=20_000, max_form_overhead_bytes=1024)
    image = _png(side=200, noisy=True)
    async with mesh.client:
        answer = await mesh.client.post(
            "/v1/jobs",
            params={"view": "L-CC"},
            headers=SUBMIT | {"Content-Type": "image/png", "Content-Length": "5000"},
            content=_pieces(image),
        )

    assert answer.status_code == 413
    assert _error(answer) == "payload_too_large"
    assert len(mesh.results.deleted) == 1 and mesh.results.jobs == {}
    assert mesh.store.objects == {} and mesh.store.uploads == {}
    assert mesh.publisher.messages == []


@pytest.mark.parametrize(
    ("content", "label"),
    [(b"%PDF-1.7\n" + b"x" * 100, "image/png"), (b"", "image/png")],
)
async def test_gateway_non_image_is_415(mesh: Mesh, content: bytes, label: str) -> None:
    answer = await mesh.client.post(
        "/v1/jobs",
        params={"view": "L-CC"},
        headers=SUBMIT | {"Content-Type": label},
        content=content,
    )

    assert answer.status_code == 415
    assert _error(answer) == "unsupported_media_type"
    assert mesh.results.jobs == {}


def _unsupported_syntax() -> bytes:
    """Lossy JPEG baseline: refused by syntax before any pixel is looked at."""
    dataset = mammogram(np.zeros((64, 64), np.uint8))
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"])
    return dicom_bytes(dataset, syntax=JPEGBaseline8Bit)


def _rle() -> bytes:
    pixels = (np.arange(256 * 256) % 4096).astype(np.uint16).reshape(256, 256)
    return compressed(mammogram(pixels), RLELossless)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (_dicom(pixels=False), "no Pixel Data"),
        (_dicom()[:-100], "truncated"),
        (_dicom(ViewPosition=None), "view field"),
    ],
)
async def test_gateway_bad_dicom_is_422(mesh: Mesh, data: bytes, words: str) -> None:
    answer = await mesh.client.post(
        "/v1/jobs", headers=SUBMIT, files={"file": ("x.dcm", data, "image/png")}
    )

    assert answer.status_code == 422, answer.text
    assert _error(answer) == "invalid_dicom"
    assert words in answer.json()["message"]
    assert mesh.results.jobs == {} and mesh.results.deleted == []


async def test_gateway_unsupported_transfer_syntax_is_422(mesh: Mesh) -> None:
    answer = await mesh.client.post(
        "/v1/jobs", headers=SUBMIT, files={"file": ("x.dcm", _unsupported_syntax())}
    )

    assert answer.status_code == 422
    assert _error(answer) == "invalid_dicom"
    assert "transfer syntax" in answer.json()["message"]


async def test_gateway_dicom_view_comes_from_tags(mesh: Mesh) -> None:
    answer = await mesh.client.post(
        "/v1/jobs",
        headers=SUBMIT,
        files={"file": ("x.dcm", _dicom(ImageLaterality="R"), "application/dicom")},
    )

    assert answer.status_code == 202, answer.text
    assert mesh.publisher.messages[0].view == "R-CC"


async def test_gateway_dicom_view_field_conflict_is_422(mesh: Mesh) -> None:
    answer = await _post(mesh, _dicom(), view="R-MLO")

    assert answer.status_code == 422  # type: ignore[attr-defined]
    assert _error(answer) == "invalid_request"
    assert "conflicts" in answer.json()["message"]  # type: ignore[attr-defined]


async def test_gateway_large_dicom_is_checked_from_its_prefix() -> None:
    mesh = build_mesh(dicom_header_bytes=4096)
    whole = _dicom(rows=512)
    async with mesh.client:
        good = await mesh.client.post(
            "/v1/jobs", headers=SUBMIT, content=_pieces(whole, 1000)
        )
        cut = await mesh.client.post(
            "/v1/jobs", headers=SUBMIT, content=_pieces(whole[:-10], 1000)
        )

    assert good.status_code == 202, good.text
    assert cut.status_code == 422
    assert _error(cut) == "invalid_dicom"
    assert len(mesh.results.deleted) == 1
    assert len(mesh.publisher.messages) == 1 and len(mesh.store.objects) == 1


async def test_gateway_large_rle_dicom_passes_header_check() -> None:
    mesh = build_mesh(dicom_header_bytes=4096)
    data = _rle()
    async with mesh.client:
        answer = await mesh.client.post(
            "/v1/jobs", headers=SUBMIT, content=_pieces(data, 1000)
        )

    assert len(data) > 8192
    assert answer.status_code == 202, answer.text


async def test_gateway_png_labelled_dicom_is_still_png(mesh: Mesh) -> None:
    answer = await mesh.client.post(
        "/v1/jobs",
        params={"view": "L-CC"},
        headers=SUBMIT | {"Content-Type": "application/dicom"},
        content=_png(),
    )

    assert answer.status_code == 202, answer.text


async def test_gateway_png_without_view_is_422(mesh: Mesh) -> None:
    answer = await mesh.client.post(
        "/v1/jobs", headers=SUBMIT, files={"file": ("a.png", _png())}
    )

    assert answer.status_code == 422
    assert _error(answer) == "invalid_request"


async def test_gateway_idempotency_key_replays_same_job(mesh: Mesh) -> None:
    image = _png()
    headers = SUBMIT | {"Idempotency-Key": "k-1"}
    files = {"file": ("a.png", image)}
    first = await mesh.client.post(
        "/v1/jobs", headers=headers, data={"view": "L-CC"}, files=files
    )
    again = await mesh.client.post(
        "/v1/jobs", headers=headers, data={"view": "L-CC"}, files=files
    )
    other = await mesh.client.post(
        "/v1/jobs",
        headers=headers,
        data={"view": "L-CC"},
        files={"file": ("a.png", _png(side=65))},
    )

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert other.status_code == 422
    assert _error(other) == "idempotency_key_reused"
    assert len(mesh.publisher.messages) == 1


async def test_gateway_field_after_file_is_422(mesh: Mesh) -> None:
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file";'
            f' filename="a.png"\r\n\r\n'
        ).encode()
        + _png()
        + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data;"
            f' name="view"\r\n\r\nL-CC\r\n--{boundary}--\r\n'
        ).encode()
    )
    answer = await mesh.client.post(
        "/v1/jobs",
        headers=SUBMIT | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )

    assert answer.status_code == 422
    assert _error(answer) == "invalid_request"
    assert mesh.results.jobs == {}


async def test_gateway_too_many_parts_is_413(mesh: Mesh) -> None:
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="view"\r\n\r\nL-CC\r\n'
    )
    body = (part * 50 + f"--{boundary}--\r\n").encode()
    answer = await mesh.client.post(
        "/v1/jobs",
        headers=SUBMIT | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )

    assert answer.status_code == 413
    assert _error(answer) == "payload_too_large"
    assert "parts" in answer.json()["message"]


async def test_gateway_broker_down_is_503_and_leaves_nothing(mesh: Mesh) -> None:
    mesh.publisher.down = True

    answer = await _post(mesh, _png())

    assert answer.status_code == 503  # type: ignore[attr-defined]
    assert _error(answer) == "broker_unavailable"
    assert answer.headers["retry-after"] == "5"  # type: ignore[attr-defined]
    assert mesh.results.jobs == {} and len(mesh.results.deleted) == 1
    assert mesh.store.objects == {} and mesh.store.uploads == {}


async def test_gateway_openapi_hides_internal_routes(mesh: Mesh) -> None:
    schema = (await mesh.client.get("/openapi.json")).json()

    assert "/v1/jobs" in schema["paths"]
    assert "413" in schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert not any(path.startswith("/internal") for path in schema["paths"])
