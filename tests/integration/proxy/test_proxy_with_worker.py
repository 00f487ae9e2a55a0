"""Proxy and the real worker together: RabbitMQ, moto's S3, the attested KMS gate.

The images go the whole enclave-side path: S3 object -> proxy -> link -> worker
(attested unwrap through the proxy's relay, decode, model, sealed result, receipt)
-> result message. Predictions are compared with the same model run directly.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.enclave_proxy.service import ProxyService
from services.enclave_worker.engine import Engine, ModelSpec
from services.enclave_worker.server import Worker
from services.enclave_worker.settings import WorkerSettings
from shared.imaging.decode import decode_image
from shared.messages import JobMessage, ResultMessage
from shared.receipt import Receipt, verify_receipt
from standins.kms_gate import GateServer
from standins.nsm import DevPki, SimulatedNsm
from tests.integration.conftest import PRINCIPALS
from tests.integration.enclave_setup import Provisioned, provision
from tests.integration.proxy.conftest import BUCKET, Broker, Bucket, ProxyFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MAMMOGRAMS = Path(__file__).resolve().parents[3].parent / "shared/data/mammograms"
TENANT = "st-marys"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sample(name: str) -> bytes:
    path = MAMMOGRAMS / name
    if not path.exists():
        pytest.skip(f"sample mammogram {path} is not on this machine")
    return path.read_bytes()


@dataclass
class Enclave:
    """One proxy with its own worker, the way a parent instance runs them."""

    proxy: ProxyService
    worker: Worker


@dataclass
class _Port:
    port: int


@pytest.fixture
async def provisioned(kms_gate: GateServer, tmp_path: Path) -> Provisioned:
    return await provision(kms_gate, tmp_path)


@pytest.fixture
async def enclaves(
    provisioned: Provisioned, dev_pki: DevPki, proxy_factory: ProxyFactory
) -> AsyncIterator[Callable[[], Any]]:
    gate = urlsplit(provisioned.gate.url)
    enclave = PRINCIPALS["enclave"]
    async with AsyncExitStack() as stack:

        async def start() -> Enclave:
            worker_port, relay_port = free_port(), free_port()
            proxy = await proxy_factory(
                _Port(worker_port),
                relay_port=relay_port,
                kms_upstream_host=gate.hostname,
                kms_upstream_port=gate.port,
                worker_access_key_id=enclave.access_key_id,
                worker_secret_access_key=enclave.secret_access_key,
                job_timeout_s=60,
            )
            settings = WorkerSettings(
                transport="tcp",
                listen_port=worker_port,
                kms_relay_port=relay_port,
                kms_scheme="http",
                bundle_dir=provisioned.bundle,
                hospital_key_id=provisioned.hospital_key,
            )
            worker = Worker(settings, SimulatedNsm(dev_pki, provisioned.pcrs))
            await worker.start()
            stack.push_async_callback(worker.stop)
            return Enclave(proxy, worker)

        yield start


async def submit(
    provisioned: Provisioned, broker: Broker, bucket: Bucket, image: bytes, view: str
) -> tuple[JobMessage, bytes]:
    job, sealed = await prepare(provisioned, image, view)
    await publish(broker, bucket, job, sealed)
    return job, sealed


async def publish(broker: Broker, bucket: Bucket, job: JobMessage, body: bytes) -> None:
    await bucket.put(job.object_key, body)
    await broker.publish_job(job.model_dump_json().encode(), job.job_id)


async def prepare(
    provisioned: Provisioned, image: bytes, view: str
) -> tuple[JobMessage, bytes]:
    job_id = str(uuid.uuid4())
    sealed = await provisioned.seal_image(image, TENANT, job_id)
    job = JobMessage(
        job_id=job_id,
        tenant=TENANT,
        bucket=BUCKET,
        object_key=f"tenants/{TENANT}/jobs/{job_id}/image.sealed",
        sealed_size=len(sealed),
        sealed_sha256=hashlib.sha256(sealed).hexdigest(),
        view=view,
        model="nyu-demo",
        nonce=secrets.token_hex(16),
        created_at=datetime.now(UTC),
    )
    return job, sealed


async def finished(broker: Broker, count: int) -> dict[str, ResultMessage]:
    messages = await broker.results(2 * count, timeout_s=120)
    return {m.job_id: m for m in messages if m.status != "running"}


async def ready(enclave: Enclave) -> None:
    from tests.integration.proxy.conftest import wait_until

    await wait_until(lambda: enclave.proxy.readiness().ready, timeout_s=60)


async def test_mammograms_through_proxy_and_worker_match_direct_model(
    provisioned: Provisioned,
    dev_pki: DevPki,
    broker: Broker,
    bucket: Bucket,
    enclaves: Callable[[], Any],
) -> None:
    enclave = await enclaves()
    await ready(enclave)
    manifest = provisioned.keys.manifest
    direct = Engine(
        ModelSpec(manifest.architecture, manifest.input_spec, tuple(manifest.labels)),
        provisioned.keys.weights,
    )
    jobs = {}
    for name, view in (("1_L_CC.png", "L-CC"), ("1_R_CC.png", "R-CC")):
        image = sample(name)
        job, sealed = await submit(provisioned, broker, bucket, image, view)
        jobs[job.job_id] = (job, sealed, image, view)
    results = await finished(broker, len(jobs))
    assert set(results) == set(jobs)
    for job_id, (job, sealed, image, view) in jobs.items():
        message = results[job_id]
        assert message.status == "succeeded", message.message
        sealed_result = base64.b64decode(message.sealed_result or "")
        document = await provisioned.open_result(sealed_result, TENANT, job_id)
        expected = direct.predict(decode_image(image).pixels, view)
        for label, probability in expected.items():
            assert abs(document["prediction"][label] - probability) <= 1e-6
        receipt = Receipt.from_json(message.receipt)
        assert receipt.record.nonce == job.nonce
        assert receipt.record.sealed_input_sha256 == hashlib.sha256(sealed).hexdigest()
        verify_receipt(
            receipt,
            root=dev_pki.root_certificate,
            pcr0=provisioned.pcrs[0],
            sealed_result_sha256=hashlib.sha256(sealed_result).hexdigest(),
        )
    assert await broker.jobs_waiting() == 0


async def test_tampered_object_fails_once_with_ciphertext_tampered(
    provisioned: Provisioned,
    broker: Broker,
    bucket: Bucket,
    enclaves: Callable[[], Any],
) -> None:
    enclave = await enclaves()
    await ready(enclave)
    job, sealed = await prepare(provisioned, sample("thumb_0_L_CC.png"), "L-CC")
    tampered = bytearray(sealed)
    tampered[-40] ^= 0x01
    # The message names the tampered object's own hash: only the envelope's
    # authentication, inside the enclave, can notice.
    job = job.model_copy(update={"sealed_sha256": hashlib.sha256(tampered).hexdigest()})
    await publish(broker, bucket, job, bytes(tampered))
    messages = await broker.results(2, timeout_s=60)
    assert [m.status for m in messages] == ["running", "failed"]
    assert messages[1].reason == "ciphertext_tampered"
    with pytest.raises(TimeoutError):  # not redelivered, so no second attempt
        await broker.results(1, timeout_s=1.5)
    assert enclave.worker.completed == 0
    assert await broker.jobs_waiting() == 0


async def test_two_proxies_with_two_workers_split_a_batch(
    provisioned: Provisioned,
    broker: Broker,
    bucket: Bucket,
    enclaves: Callable[[], Any],
) -> None:
    first, second = await enclaves(), await enclaves()
    await ready(first)
    await ready(second)
    image = sample("thumb_0_L_CC.png")
    submitted = [
        (await submit(provisioned, broker, bucket, image, "L-CC"))[0].job_id
        for _ in range(8)
    ]
    results = await finished(broker, len(submitted))
    assert set(results) == set(submitted)
    assert all(m.status == "succeeded" for m in results.values())
    assert first.worker.completed + second.worker.completed == len(submitted)
    assert first.worker.completed > 0 and second.worker.completed > 0
