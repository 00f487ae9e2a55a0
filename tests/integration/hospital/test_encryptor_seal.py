"""The encryptor against real moto S3, the attested KMS gate and RabbitMQ."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest
import structlog

from services.encryptor.storage import S3ObjectStore
from shared import broker
from shared.cms import generate_recipient_key, public_key_der
from shared.envelope import unseal_bytes
from shared.keys import Recipient
from shared.kms import AwsKeyService, Credentials, KmsEndpoint
from shared.messages import parse_job
from standins.kms_gate import GateServer
from standins.moto_server import MotoServer
from standins.nsm import SimulatedNsm
from tests.integration.conftest import PRINCIPALS, REGION
from tests.integration.hospital.conftest import (
    AMQP_URL,
    INTERNAL_TOKEN,
    SettingsFactory,
    closed_port,
    encryptor_app,
    s3_client,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MIB = 1024 * 1024
MARKER = b"OBSCURA-MARKER-7f3a9c"
JOB_ID = "5b0c2a94-8a3e-4c1e-9d7e-2f1c0b6a7e11"
HEADERS = {"Authorization": f"Bearer {INTERNAL_TOKEN}"}


def _query(job_id: str = JOB_ID) -> dict[str, str]:
    return {
        "tenant": "st-olaf",
        "job_id": job_id,
        "view": "L-CC",
        "model": "nyu-gmic",
        "priority": "stat",
        "nonce": "ab" * 16,
    }


def _image(size: int) -> bytes:
    body = bytearray(os.urandom(size))
    body[size // 2 : size // 2 + len(MARKER)] = MARKER
    return bytes(body)


async def _pieces(data: bytes, step: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://encryptor"
    )


async def _stored_keys(moto_server: MotoServer, bucket: str) -> list[str]:
    async with s3_client(moto_server) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket, Prefix="tenants/")
        uploads = await s3.list_multipart_uploads(Bucket=bucket)
    keys = [item["Key"] for item in listing.get("Contents", [])]
    return keys + [item["Key"] for item in uploads.get("Uploads", [])]


async def _unseal_as_enclave(
    kms_gate: GateServer, nsm: SimulatedNsm, sealed: bytes, job_id: str
) -> bytes:
    """Open the object the way the enclave does: attested Decrypt to a recipient."""
    private_key = generate_recipient_key()
    document = nsm.attest(public_key=public_key_der(private_key), nonce=b"n" * 16)
    principal = PRINCIPALS["enclave"]
    credentials = Credentials(principal.access_key_id, principal.secret_access_key)
    endpoint = KmsEndpoint(region=REGION, endpoint_url=kms_gate.url)
    context = {"purpose": "image", "tenant": "st-olaf", "job_id": job_id}
    async with AwsKeyService.connect(endpoint, credentials) as keys:
        plaintext = await unseal_bytes(
            sealed, keys, context, recipient=Recipient(document, private_key)
        )
    return bytes(plaintext)


async def _next_job(topology: broker.Topology) -> bytes:
    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.jobs_queue)
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        return message.body


async def test_encryptor_seal_stores_parts_and_publishes_job(
    encryptor_settings: SettingsFactory,
    moto_server: MotoServer,
    kms_gate: GateServer,
    enclave_nsm: SimulatedNsm,
    bucket: str,
    topology: broker.Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    part_sizes: list[int] = []
    real_upload_part = S3ObjectStore.upload_part

    async def recording(self: S3ObjectStore, *args: Any) -> Any:
        part_sizes.append(len(args[-1].getvalue()))
        return await real_upload_part(self, *args)

    monkeypatch.setattr(S3ObjectStore, "upload_part", recording)
    image = _image(12 * MIB)

    with structlog.testing.capture_logs() as logs:
        async with encryptor_app(encryptor_settings()) as app, _client(app) as client:
            answer = await client.post(
                "/internal/v1/seal",
                params=_query(),
                headers=HEADERS,
                content=_pieces(image),
            )

    assert answer.status_code == 201, answer.text
    outcome = answer.json()
    assert outcome["object_key"] == f"tenants/st-olaf/jobs/{JOB_ID}/image.sealed"
    assert outcome["body_size"] == len(image)
    assert outcome["body_sha256"] == hashlib.sha256(image).hexdigest()
    assert len(part_sizes) == 3
    assert part_sizes[:2] == [5 * MIB, 5 * MIB]
    assert 0 < part_sizes[2] < 5 * MIB
    async with s3_client(moto_server) as s3:
        stored = await s3.get_object(Bucket=bucket, Key=outcome["object_key"])
        sealed = await stored["Body"].read()
    assert len(sealed) == outcome["sealed_size"] == sum(part_sizes)
    assert hashlib.sha256(sealed).hexdigest() == outcome["sealed_sha256"]
    assert MARKER not in sealed
    assert await _unseal_as_enclave(kms_gate, enclave_nsm, sealed, JOB_ID) == image
    body = await _next_job(topology)
    assert MARKER not in body
    job = parse_job(body)
    assert (job.job_id, job.object_key, job.bucket) == (
        JOB_ID,
        outcome["object_key"],
        bucket,
    )
    assert (job.sealed_sha256, job.nonce, job.priority) == (
        outcome["sealed_sha256"],
        "ab" * 16,
        "stat",
    )
    assert logs
    assert MARKER.decode() not in repr(logs)


async def test_encryptor_broker_down_answers_503_and_removes_object(
    encryptor_settings: SettingsFactory, moto_server: MotoServer, bucket: str
) -> None:
    settings = encryptor_settings(
        amqp_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    )
    started = time.monotonic()
    async with encryptor_app(settings) as app, _client(app) as client:
        answer = await client.post(
            "/internal/v1/seal",
            params=_query(),
            headers=HEADERS,
            content=_pieces(_image(MIB)),
        )
    elapsed = time.monotonic() - started

    assert answer.status_code == 503
    assert answer.json()["error"] == "broker_unavailable"
    assert answer.headers["retry-after"] == "5"
    assert elapsed < 10
    assert await _stored_keys(moto_server, bucket) == []


async def test_encryptor_body_past_cap_is_413_and_aborts_upload(
    encryptor_settings: SettingsFactory, moto_server: MotoServer, bucket: str
) -> None:
    settings = encryptor_settings(max_upload_bytes=MIB)
    async with encryptor_app(settings) as app, _client(app) as client:
        answer = await client.post(
            "/internal/v1/seal",
            params=_query(),
            headers=HEADERS,
            content=_pieces(_image(2 * MIB)),
        )

    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
    assert await _stored_keys(moto_server, bucket) == []


async def test_encryptor_seal_without_internal_token_is_401(
    encryptor_settings: SettingsFactory, moto_server: MotoServer, bucket: str
) -> None:
    async with encryptor_app(encryptor_settings()) as app, _client(app) as client:
        answer = await client.post(
            "/internal/v1/seal",
            params=_query(),
            headers={"Authorization": "Bearer wrong"},
            content=b"x",
        )

    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert await _stored_keys(moto_server, bucket) == []


async def test_encryptor_broker_cut_during_upload_answers_503_and_leaves_nothing(
    encryptor_settings: SettingsFactory, moto_server: MotoServer, bucket: str
) -> None:
    from tests.faults import FaultyLink

    async with FaultyLink("127.0.0.1", 5672) as link:
        settings = encryptor_settings(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{link.port}/"
        )
        async with encryptor_app(settings) as app, _client(app) as client:
            warm = await client.post(
                "/internal/v1/seal",
                params=_query(),
                headers=HEADERS,
                content=_pieces(_image(MIB)),
            )
            assert warm.status_code == 201, warm.text
            assert link.accepted == 1

            async def upload_then_cut() -> AsyncIterator[bytes]:
                async for piece in _pieces(_image(6 * MIB)):
                    yield piece
                    if not link.is_cut:
                        link.cut()  # the broker goes away mid-upload

            job_id = "0d7b1a52-4e0f-4a3c-8a51-3c2e9f6d1b77"
            started = time.monotonic()
            answer = await client.post(
                "/internal/v1/seal",
                params=_query(job_id),
                headers=HEADERS,
                content=upload_then_cut(),
            )
            elapsed = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "broker_unavailable"
    assert elapsed < 15
    keys = await _stored_keys(moto_server, bucket)
    assert not [key for key in keys if job_id in key]
    assert [key for key in keys if JOB_ID in key]  # the warm-up job's object stays
