"""The enclave worker against the real stand-ins, driven as the proxy drives it.

The worker runs in this process with the simulated NSM over the measured PCRs;
its KMS traffic goes through its tunnel and a relay (the proxy's half) to the
attested KMS gate in front of moto.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.enclave_worker.engine import Engine, ModelSpec
from services.enclave_worker.server import Worker
from shared.enclave_protocol import (
    HandedCredentials,
    JobOutcome,
    JobRequest,
    WorkerClient,
)
from shared.errors import Reason
from shared.imaging.decode import decode_image
from shared.link import PeerError
from shared.receipt import Receipt, verify_receipt
from standins.inprocess import running_worker as in_process
from standins.kms_gate import GateServer
from standins.nsm import DevPki
from tests.integration.conftest import PRINCIPALS
from tests.integration.enclave_setup import Provisioned, pieces, provision

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MAMMOGRAMS = Path(__file__).resolve().parents[2].parent / "shared/data/mammograms"
TENANT = "st-marys"


def sample(name: str) -> bytes:
    path = MAMMOGRAMS / name
    if not path.exists():
        pytest.skip(f"sample mammogram {path} is not on this machine")
    return path.read_bytes()


@dataclass
class Running:
    worker: Worker
    client: WorkerClient
    provisioned: Provisioned


def enclave_credentials() -> HandedCredentials:
    enclave = PRINCIPALS["enclave"]
    return HandedCredentials(enclave.access_key_id, enclave.secret_access_key)


@contextlib.asynccontextmanager
async def running_worker(
    provisioned: Provisioned,
    pcrs: Mapping[int, bytes],
    dev_pki: DevPki,
    **nsm_args: bool,
) -> AsyncIterator[Running]:
    async with in_process(
        provisioned.gate.url,
        provisioned.bundle,
        provisioned.hospital_key,
        dev_pki,
        pcrs,
        **nsm_args,
    ) as started:
        await started.client.hand_credentials(enclave_credentials())
        yield Running(started.worker, started.client, provisioned)


async def wait_settled(client: WorkerClient, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            status = await client.status()
            if status.ready or status.reason == Reason.MODEL_UNAVAILABLE.value:
                return
            await asyncio.sleep(0.1)


async def submit(
    running: Running, image: bytes, view: str
) -> tuple[str, bytes, JobOutcome]:
    job_id = str(uuid.uuid4())
    nonce = secrets.token_bytes(16)
    sealed = await running.provisioned.seal_image(image, TENANT, job_id)
    request = JobRequest(job_id, TENANT, nonce, len(sealed), "nyu-demo", view)
    outcome = await running.client.run_job(request, pieces(sealed), timeout_s=120)
    return job_id, sealed, outcome


@pytest.fixture
async def provisioned(kms_gate: GateServer, tmp_path: Path) -> Provisioned:
    return await provision(kms_gate, tmp_path)


async def test_worker_predictions_match_direct_run_and_receipts_verify(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    manifest = provisioned.keys.manifest
    direct = Engine(
        ModelSpec(manifest.architecture, manifest.input_spec, tuple(manifest.labels)),
        provisioned.keys.weights,
    )
    async with running_worker(provisioned, provisioned.pcrs, dev_pki) as running:
        await wait_settled(running.client)
        status = await running.client.status()
        assert status.ready, status.message
        assert status.pcr0 == provisioned.pcrs[0].hex()
        for name, view in (("1_L_CC.png", "L-CC"), ("1_R_CC.png", "R-CC")):
            image = sample(name)
            job_id, sealed, outcome = await submit(running, image, view)
            document = await provisioned.open_result(
                outcome.sealed_result,
                TENANT,
                job_id,
            )
            expected = direct.predict(decode_image(image).pixels, view)
            for label, probability in expected.items():
                assert abs(document["prediction"][label] - probability) <= 1e-6
            with Image.open(MAMMOGRAMS / name) as png:
                own = np.asarray(png, dtype=np.uint16)
            assert document["input"]["pixels_sha256"] == hashlib.sha256(own).hexdigest()
            receipt = Receipt.loads(outcome.receipt)
            assert (
                receipt.record.sealed_input_sha256 == hashlib.sha256(sealed).hexdigest()
            )
            verify_receipt(
                receipt,
                root=dev_pki.root_certificate,
                pcr0=provisioned.pcrs[0],
                sealed_result_sha256=hashlib.sha256(outcome.sealed_result).hexdigest(),
            )


async def test_worker_tampered_image_fails_with_ciphertext_tampered(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    async with running_worker(provisioned, provisioned.pcrs, dev_pki) as running:
        await wait_settled(running.client)
        job_id = str(uuid.uuid4())
        sealed = bytearray(
            await provisioned.seal_image(sample("1_L_CC.png"), TENANT, job_id)
        )
        sealed[len(sealed) // 2] ^= 0x40
        request = JobRequest(job_id, TENANT, b"n" * 16, len(sealed), "nyu-demo", "L-CC")
        with pytest.raises(PeerError) as failed:
            await running.client.run_job(request, pieces(bytes(sealed)), timeout_s=60)
        assert failed.value.reason is Reason.CIPHERTEXT_TAMPERED
        assert not failed.value.retryable


async def test_worker_refuses_image_of_another_job(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    async with running_worker(provisioned, provisioned.pcrs, dev_pki) as running:
        await wait_settled(running.client)
        sealed = await provisioned.seal_image(b"\x89PNG", TENANT, str(uuid.uuid4()))
        request = JobRequest(
            str(uuid.uuid4()), TENANT, b"n" * 16, len(sealed), "nyu-demo", "L-CC"
        )
        with pytest.raises(PeerError) as failed:
            await running.client.run_job(request, pieces(sealed), timeout_s=60)
        assert failed.value.reason is Reason.KEY_CONTEXT_MISMATCH
        assert not failed.value.retryable


async def test_worker_with_other_measurement_is_not_ready(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    altered = dict(provisioned.pcrs)
    altered[2] = hashlib.sha384(b"one byte changed").digest()
    altered[0] = hashlib.sha384(altered[1] + altered[2]).digest()
    async with running_worker(provisioned, altered, dev_pki) as running:
        await wait_settled(running.client)
        status = await running.client.status()
        assert not status.ready
        assert status.reason == Reason.MODEL_UNAVAILABLE.value
        assert "AccessDenied" in (status.message or "")
        request = JobRequest(
            str(uuid.uuid4()), TENANT, b"n" * 16, 0, "nyu-demo", "L-CC"
        )
        with pytest.raises(PeerError) as failed:
            await running.client.run_job(request, pieces(b""), timeout_s=30)
        assert failed.value.reason is Reason.MODEL_UNAVAILABLE


async def test_worker_in_debug_mode_cannot_unlock(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    async with running_worker(
        provisioned, provisioned.pcrs, dev_pki, debug=True
    ) as running:
        await wait_settled(running.client)
        status = await running.client.status()
        assert not status.ready
        assert status.pcr0 == "00" * 48


async def test_worker_credentials_never_reach_its_logs(
    provisioned: Provisioned, dev_pki: DevPki, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_worker(provisioned, provisioned.pcrs, dev_pki) as running:
        await wait_settled(running.client)
        await submit(running, sample("thumb_0_L_CC.png"), "L-CC")
    captured = capsys.readouterr()
    secret = PRINCIPALS["enclave"].secret_access_key
    logs = captured.out + captured.err
    assert "job done" in logs
    assert secret not in logs


async def test_worker_runs_several_jobs_at_once(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    async with running_worker(provisioned, provisioned.pcrs, dev_pki) as running:
        await wait_settled(running.client)
        image = sample("thumb_0_L_CC.png")
        outcomes = await asyncio.gather(
            *(submit(running, image, "L-CC") for _ in range(4))
        )
        job_ids = {job_id for job_id, _, _ in outcomes}
        assert len(job_ids) == 4
        for job_id, _, outcome in outcomes:
            document = await provisioned.open_result(
                outcome.sealed_result,
                TENANT,
                job_id,
            )
            assert document["job_id"] == job_id
        status = await running.client.status()
        assert status.busy == 0 and status.slots == 2


async def test_worker_refuses_a_job_for_another_model(
    provisioned: Provisioned, dev_pki: DevPki
) -> None:
    async with running_worker(provisioned, provisioned.pcrs, dev_pki) as running:
        await wait_settled(running.client)
        job_id = str(uuid.uuid4())
        sealed = await provisioned.seal_image(
            sample("thumb_0_L_CC.png"), TENANT, job_id
        )
        request = JobRequest(job_id, TENANT, b"n" * 16, len(sealed), "other", "L-CC")
        with pytest.raises(PeerError) as failed:
            await running.client.run_job(request, pieces(sealed), timeout_s=60)
    assert failed.value.reason is Reason.MODEL_UNAVAILABLE
    assert not failed.value.retryable
    assert "nyu-demo" in str(failed.value)
