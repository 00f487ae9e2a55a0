"""The hospital-facing REST API end to end, over the real mesh.

Every service is its own process; RabbitMQ and PostgreSQL are the machine's own,
S3 and KMS are moto behind the attested gate, the worker attests with the
simulated NSM over the PCRs measured from its files.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import numpy as np
import pytest
from aiobotocore.session import get_session

from shared.attestation import load_root
from shared.receipt import Receipt, verify_receipt
from tests.imaging_factories import dicom_bytes, mammogram, png_bytes, png_chunk
from tests.integration.mesh.conftest import Mesh, sample

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ALL = ("jobs:submit", "jobs:read", "results:read", "results:decrypt")


def client(mesh: Mesh, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=mesh.gateway, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def post_png(
    http: httpx.Client, data: bytes, view: str = "L-CC", **headers: str
) -> httpx.Response:
    return http.post(
        "/v1/jobs",
        data={"view": view},
        files={"file": ("image.png", data, "image/png")},
        headers=headers,
    )


def wait_done(http: httpx.Client, job_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def test_mesh_mammogram_gets_a_prediction_with_a_receipt_that_verifies(
    mesh: Mesh,
) -> None:
    with client(mesh, mesh.token("st-marys", *ALL)) as http:
        answer = post_png(http, sample("1_L_CC.png").read_bytes())
        assert answer.status_code == 202, answer.text
        submitted = answer.json()
        assert submitted["links"]["result"].endswith("/result")
        job = wait_done(http, submitted["job_id"])
        assert job["status"] == "succeeded", job
        result = http.get(
            f"/v1/jobs/{job['job_id']}/result", params={"decrypt": "true"}
        )
    assert result.status_code == 200, result.text
    body = result.json()
    prediction = body["prediction"]
    assert set(prediction) == {"benign", "malignant"}
    assert all(0.0 <= p <= 1.0 for p in prediction.values())
    receipt = Receipt.from_json(body["receipt"])
    assert receipt.record.job_id == job["job_id"]
    assert receipt.record.nonce == job["nonce"]
    verify_receipt(
        receipt,
        root=load_root(Path(mesh.info["dev_root_pem"])),
        pcr0=bytes.fromhex(mesh.info["pcr0"]),
        sealed_result_sha256=body["sealed_result_sha256"],
    )


def test_mesh_missing_scope_is_403(mesh: Mesh) -> None:
    with client(mesh, mesh.token("st-marys", "jobs:read")) as http:
        answer = post_png(http, sample("thumb_0_L_CC.png").read_bytes())
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"


def test_mesh_other_tenants_job_is_404_like_a_missing_one(mesh: Mesh) -> None:
    with client(mesh, mesh.token("st-marys", *ALL)) as owner:
        job_id = post_png(owner, sample("thumb_0_L_CC.png").read_bytes()).json()[
            "job_id"
        ]
    with client(mesh, mesh.token("other-clinic", *ALL)) as stranger:
        theirs = stranger.get(f"/v1/jobs/{job_id}")
        missing = stranger.get(f"/v1/jobs/{uuid.uuid4()}")
        their_result = stranger.get(f"/v1/jobs/{job_id}/result")
    assert theirs.status_code == missing.status_code == their_result.status_code == 404
    assert theirs.json()["error"] == missing.json()["error"] == "not_found"


def test_mesh_decrypt_needs_the_decrypt_scope(mesh: Mesh) -> None:
    with client(mesh, mesh.token("st-marys", *ALL)) as owner:
        job_id = post_png(owner, sample("thumb_0_L_CC.png").read_bytes()).json()[
            "job_id"
        ]
        wait_done(owner, job_id)
    with client(mesh, mesh.token("st-marys", "jobs:read", "results:read")) as reader:
        sealed = reader.get(f"/v1/jobs/{job_id}/result")
        clear = reader.get(f"/v1/jobs/{job_id}/result", params={"decrypt": "true"})
    assert sealed.status_code == 200 and sealed.json().get("prediction") is None
    assert clear.status_code == 403 and clear.json()["error"] == "forbidden"


def test_mesh_idempotency_key_gives_the_same_job(mesh: Mesh) -> None:
    image = sample("thumb_0_L_CC.png").read_bytes()
    key = str(uuid.uuid4())
    with client(mesh, mesh.token("st-marys", *ALL)) as http:
        first = post_png(http, image, **{"Idempotency-Key": key})
        wait_done(http, first.json()["job_id"])
        again = post_png(http, image, **{"Idempotency-Key": key})
        other = post_png(http, image[:-1] + b"\x00", **{"Idempotency-Key": key})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["nonce"] == first.json()["nonce"]
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"


def test_mesh_refuses_what_is_not_an_image(mesh: Mesh) -> None:
    pixels = np.zeros((64, 64), dtype=np.uint16)
    no_pixels = mammogram(pixels)
    del no_pixels.PixelData
    with client(mesh, mesh.token("st-marys", *ALL)) as http:
        pdf = post_png(http, b"%PDF-1.7\n" + b"0" * 200)
        dicom = http.post(
            "/v1/jobs",
            files={"file": ("x.dcm", dicom_bytes(no_pixels), "application/dicom")},
        )
    assert pdf.status_code == 415 and pdf.json()["error"] == "unsupported_media_type"
    assert dicom.status_code == 422 and dicom.json()["error"] == "invalid_dicom"


async def _tap(mesh: Mesh) -> tuple[Any, list[Any]]:
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    channel = await connection.channel()
    taps = []
    for exchange, key in (
        (f"{mesh.prefix}.jobs", "job"),
        (f"{mesh.prefix}.results", "result"),
    ):
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=key)
        taps.append(queue)
    return connection, taps


async def _drain(taps: list[Any]) -> list[bytes]:
    bodies = []
    for queue in taps:
        while (message := await queue.get(fail=False)) is not None:
            bodies.append(bytes(message.body))
            await message.ack()
    return bodies


async def _objects(mesh: Mesh) -> list[bytes]:
    moto = f"http://127.0.0.1:{mesh.info['ports']['moto']}"
    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=moto,
        aws_access_key_id="AKIATESTREADER", aws_secret_access_key="x",
    ) as s3:  # fmt: skip
        listing = await s3.list_objects_v2(Bucket=mesh.bucket)
        found = []
        for item in listing.get("Contents", []):
            got = await s3.get_object(Bucket=mesh.bucket, Key=item["Key"])
            found.append(await got["Body"].read())
        return found


async def _rows(mesh: Mesh) -> list[str]:
    connection = await asyncpg.connect(
        f"postgresql://postgres@127.0.0.1:5432/{mesh.database}", timeout=5
    )
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
        rows = []
        for table in tables:
            name = table["tablename"]
            for row in await connection.fetch(
                f'SELECT row_to_json(t)::text AS j FROM "{name}" t'  # noqa: S608 - names from pg_tables
            ):
                rows.append(row["j"])
        return rows
    finally:
        await connection.close()


def test_mesh_marker_in_an_image_never_leaves_the_enclave(mesh: Mesh) -> None:
    marker = f"OBSCURA-MARKER-{uuid.uuid4().hex}"
    pixels = (np.arange(256 * 200, dtype=np.uint32) % 65536).astype(np.uint16)
    base = png_bytes(pixels.reshape(256, 200))
    # A text chunk before IEND: decoders skip it, but the bytes travel with the image.
    png = base[:-12] + png_chunk(b"tEXt", b"Comment\x00" + marker.encode()) + base[-12:]
    dicom = dicom_bytes(
        mammogram(
            pixels.reshape(256, 200), PatientName=f"{marker}^DOE", PatientID=marker
        )
    )
    assert marker.encode() in png and marker.encode() in dicom
    token = mesh.token("st-marys", *ALL)

    jobs: list[str] = []

    async def scenario() -> tuple[list[bytes], list[bytes], list[str]]:
        connection, taps = await _tap(mesh)
        try:
            with client(mesh, token) as http:
                jobs.append(post_png(http, png).json()["job_id"])
                dicom_job = http.post(
                    "/v1/jobs", files={"file": ("x.dcm", dicom, "application/dicom")}
                )
                jobs.append(dicom_job.json()["job_id"])
                for job_id in jobs:
                    done = await asyncio.to_thread(wait_done, http, job_id)
                    assert done["status"] == "succeeded", done
                    http.get(f"/v1/jobs/{job_id}/result", params={"decrypt": "true"})
            await asyncio.sleep(0.5)
            messages = await _drain(taps)
        finally:
            await connection.close()
        return messages, await _objects(mesh), await _rows(mesh)

    messages, objects, rows = asyncio.run(scenario())
    # The scans see the jobs themselves, so an empty scan cannot pass for a clean one.
    for job_id in jobs:
        assert any(job_id.encode() in m for m in messages)
        assert any(job_id in r for r in rows)
    assert len(objects) >= 2
    needle = marker.encode()
    assert not [m for m in messages if needle in m]
    assert not [o for o in objects if needle in o]
    assert not [r for r in rows if marker in r]
    for log in mesh.run_dir.glob("*.log"):
        assert marker not in log.read_text(errors="replace"), log.name
